//! The epoch plan: which shards each canonical partition reads, in which order, and how many
//! batches an epoch has. Pure functions of (seed, epoch, shard list, sizes), no I/O.
//!
//! The dataset is split into `C` *canonical partitions*, a number fixed for the run and stored
//! in checkpoints. Each partition is one sequential stream of samples: its shards one after
//! the other, shuffled in windows (see [`window_permutation`]). Global batch `s` takes `B / C`
//! consecutive samples of every partition, partition-major, so its rows depend on
//! (seed, epoch, s, B, C) only. A rank of `W` reads the `C / W` partitions whose rows are its
//! own, and never opens the shards of the others.

use crate::rng::Rng;
use crate::sampling::EpochPermutation;
use crate::DataError;

/// Key word separating shard-order draws from every other use of the seed.
const SHARD_ORDER_STREAM: u64 = 0x7368_6172_645f_6f72;
/// Key word of resampled shard draws.
const RESAMPLE_STREAM: u64 = 0x7265_7361_6d70_6c65;
/// Key word of the in-window sample shuffle.
const WINDOW_STREAM: u64 = 0x7769_6e64_6f77_2121;
/// Key word of per-sample augmentation.
const AUGMENT_STREAM: u64 = 0x6175_676d_656e_7421;

/// One shard of the run's shard list.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardEntry {
    /// URL or path.
    pub url: String,
    /// Index of the `::`-separated source it belongs to.
    pub source: usize,
    /// Sampling weight of its source (resampled mode).
    pub weight: f64,
    /// Sample count from `sizes.json` (or the Parquet footer), when known.
    pub samples: Option<u64>,
}

/// How an epoch walks the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOrder {
    /// Every shard once per epoch, in a seeded order, spread over the partitions.
    Shuffled,
    /// Every shard once, in the given order, all in one partition (evaluation).
    Sequential,
    /// Shards drawn with replacement, weighted by their source's weight (OpenCLIP's
    /// `--dataset-resampled`); a partition's stream never ends.
    Resampled,
}

/// The shards of every partition for one epoch.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    seed: u64,
    epoch: u64,
    order: ShardOrder,
    /// Shard indices per partition (empty in resampled mode).
    assigned: Vec<Vec<usize>>,
    /// Cumulative weights of all shards (resampled mode).
    cumulative: Vec<f64>,
}

impl EpochPlan {
    /// The plan of `epoch` for `partitions` partitions over `shards`.
    ///
    /// In shuffled mode the shards are permuted by (seed, epoch) and dealt to the partition
    /// holding the fewest samples so far (round-robin when sizes are unknown), so partitions
    /// stay balanced.
    pub fn new(shards: &[ShardEntry], partitions: usize, seed: u64, epoch: u64, order: ShardOrder) -> EpochPlan {
        let mut assigned = vec![Vec::new(); partitions.max(1)];
        let mut cumulative = Vec::new();
        match order {
            ShardOrder::Sequential => assigned[0] = (0..shards.len()).collect(),
            ShardOrder::Shuffled => {
                let perm = EpochPermutation::new(mix(&[seed, SHARD_ORDER_STREAM]), epoch, shards.len() as u64);
                let mut load = vec![0u64; assigned.len()];
                for position in 0..shards.len() {
                    let shard = perm.index(position as u64) as usize;
                    let target = match shards[shard].samples {
                        Some(_) => (0..load.len()).min_by_key(|&p| (load[p], p)).unwrap_or(0),
                        None => position % assigned.len(),
                    };
                    load[target] += shards[shard].samples.unwrap_or(1);
                    assigned[target].push(shard);
                }
            }
            ShardOrder::Resampled => {
                let mut total = 0.0;
                for s in shards {
                    total += s.weight;
                    cumulative.push(total);
                }
            }
        }
        EpochPlan { seed, epoch, order, assigned, cumulative }
    }

    /// The epoch this plan is for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The `i`-th shard read by `partition`, or `None` past its last.
    pub fn shard(&self, partition: usize, i: u64) -> Option<usize> {
        match self.order {
            ShardOrder::Resampled => {
                let total = *self.cumulative.last()?;
                let mut rng = Rng::from_key(&[self.seed, RESAMPLE_STREAM, self.epoch, partition as u64, i]);
                let x = rng.next_f64() * total;
                let at = self.cumulative.partition_point(|&c| c <= x);
                Some(at.min(self.cumulative.len() - 1))
            }
            _ => self.assigned.get(partition)?.get(usize::try_from(i).ok()?).copied(),
        }
    }

    /// The samples `partition` holds according to the known sizes (`None` when some are
    /// unknown, or in resampled mode, where partitions never end).
    pub fn partition_samples(&self, partition: usize, shards: &[ShardEntry]) -> Option<u64> {
        if self.order == ShardOrder::Resampled {
            return None;
        }
        self.assigned.get(partition)?.iter().map(|&s| shards[s].samples).sum()
    }
}

/// The order in which window `window` of `partition` hands out its `len` samples: position
/// `j` of the output is sample `perm.index(j)` of the window.
pub fn window_permutation(seed: u64, epoch: u64, partition: usize, window: u64, len: u64) -> EpochPermutation {
    EpochPermutation::new(mix(&[seed, WINDOW_STREAM, partition as u64, window]), epoch, len)
}

/// The augmentation stream of the sample at raw position `position` of `partition`'s stream
/// in `epoch`: independent of the world size, the rank and the thread that decodes it.
pub fn augment_rng(seed: u64, epoch: u64, partition: usize, position: u64) -> Rng {
    Rng::from_key(&[seed, AUGMENT_STREAM, epoch, partition as u64, position])
}

fn mix(words: &[u64]) -> u64 {
    Rng::from_key(words).next_u64()
}

/// Picks the number of canonical partitions when the configuration leaves it open: the
/// largest `c ≤ max(16, world)` that the world size divides, that divides the global batch,
/// and (unless resampling) is at most the number of shards.
///
/// # Errors
/// [`DataError::InvalidArgument`] naming `train_data` when there are fewer shards than ranks,
/// or `batch_size` when no such `c` exists.
pub fn auto_partitions(shards: usize, world: usize, global_batch: usize, resampled: bool) -> Result<usize, DataError> {
    let cap = if resampled { 16.max(world) } else { 16.max(world).min(shards) };
    if cap < world {
        return Err(DataError::InvalidArgument {
            name: "train_data",
            value: format!("{shards} shard(s)"),
            allowed: format!(
                "at least one shard per rank ({world} ranks): write smaller shards (`clipfleet shards make --samples-per-shard`), or use --dataset-resampled"
            ),
        });
    }
    (world..=cap).rev().find(|c| c.is_multiple_of(world) && global_batch.is_multiple_of(*c)).ok_or_else(|| {
        DataError::InvalidArgument {
            name: "batch_size",
            value: global_batch.to_string(),
            allowed: format!(
                "a global batch divisible by a partition count between {world} and {cap} (set data_partitions)"
            ),
        }
    })
}

/// Checks an explicit partition count against the world size, the global batch and the shards.
///
/// # Errors
/// [`DataError::InvalidArgument`] naming `data_partitions`.
pub fn check_partitions(
    partitions: usize,
    shards: usize,
    world: usize,
    global_batch: usize,
    resampled: bool,
) -> Result<(), DataError> {
    let bad = |why: String| DataError::InvalidArgument {
        name: "data_partitions",
        value: partitions.to_string(),
        allowed: why,
    };
    if partitions == 0 || !partitions.is_multiple_of(world) {
        return Err(bad(format!("a positive multiple of the world size {world}")));
    }
    if !global_batch.is_multiple_of(partitions) {
        return Err(bad(format!("a divisor of the global batch {global_batch}")));
    }
    if !resampled && partitions > shards {
        return Err(bad(format!("at most the number of shards ({shards}), or use --dataset-resampled")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize, size: Option<u64>) -> Vec<ShardEntry> {
        (0..n).map(|i| ShardEntry { url: format!("s{i}"), source: 0, weight: 1.0, samples: size }).collect()
    }

    #[test]
    fn every_shard_once_and_balanced() {
        let list = shards(37, Some(10));
        let plan = EpochPlan::new(&list, 8, 3, 1, ShardOrder::Shuffled);
        let mut seen = [0; 37];
        for p in 0..8 {
            let mut i = 0;
            while let Some(s) = plan.shard(p, i) {
                seen[s] += 1;
                i += 1;
            }
            let n = plan.partition_samples(p, &list).expect("sizes known");
            assert!((40..=50).contains(&n), "partition {p} holds {n}");
        }
        assert!(seen.iter().all(|&c| c == 1));
        let next = EpochPlan::new(&list, 8, 3, 2, ShardOrder::Shuffled);
        let first = |plan: &EpochPlan| (0..8).map(|p| plan.shard(p, 0)).collect::<Vec<_>>();
        assert_ne!(first(&plan), first(&next), "epochs reorder the shards");
    }

    #[test]
    fn resampling_follows_weights() {
        let mut list = shards(2, None);
        list[1].weight = 3.0;
        let plan = EpochPlan::new(&list, 1, 9, 0, ShardOrder::Resampled);
        let ones = (0..4000).filter(|&i| plan.shard(0, i) == Some(1)).count();
        assert!((2800..3200).contains(&ones), "{ones}");
        assert_eq!(plan.partition_samples(0, &list), None);
    }

    #[test]
    fn partition_counts() {
        assert_eq!(auto_partitions(100, 1, 256, false).expect("ok"), 16);
        assert_eq!(auto_partitions(5, 1, 64, false).expect("ok"), 4);
        assert_eq!(auto_partitions(5, 2, 64, false).expect("ok"), 4);
        assert_eq!(auto_partitions(100, 32, 1024, false).expect("ok"), 32);
        assert!(auto_partitions(1, 2, 64, false).unwrap_err().to_string().contains("train_data"));
        assert_eq!(auto_partitions(1, 2, 64, true).expect("ok"), 16);
        assert!(check_partitions(6, 10, 4, 48, false).unwrap_err().to_string().contains("data_partitions"));
        assert!(check_partitions(8, 10, 4, 48, false).is_ok());
    }
}
