//! The epoch plan: which samples each canonical partition reads, in which order, and how many
//! batches an epoch has. Pure functions of (seed, epoch, shard list, sizes), no I/O.
//!
//! The dataset is split into `C` *canonical partitions*, a number fixed for the run and stored
//! in checkpoints. Each partition is one sequential stream of samples: a list of
//! [`Segment`]s (runs of consecutive samples of one shard) read one after the other, shuffled
//! in windows (see [`window_permutation`]). Global batch `s` takes `B / C` consecutive samples
//! of every partition, partition-major, so its rows depend on (seed, epoch, s, B, C) only. A
//! rank of `W` reads the `C / W` partitions whose rows are its own, and never opens the shards
//! of the others.
//!
//! # What an epoch is
//! When every shard's sample count is known, an epoch permutes the shards by (seed, epoch),
//! lays their `N` samples end to end, and cuts that sequence into `C` ranges of `⌊N/C⌋` or
//! `⌈N/C⌉` samples. A shard that straddles a cut is read by both partitions, each its own part,
//! so shards of any sizes (1, 100 and 7 samples) give partitions that differ by at most one
//! sample. The epoch has `⌊⌊N/C⌋ / (B/C)⌋` global batches: every sample at most once, at most
//! `B − 1 + C` left out (they come first in some later epoch's order).
//!
//! A partition that runs out of samples before the epoch ends (corrupt samples were skipped,
//! a count overstated a shard, or `--train-num-samples` asks for more than the data holds)
//! goes on with a second *pass* over its own segments, in a new shuffle, and so on: the batch
//! stays full and the same for every world size. A pass that yields no sample at all ends
//! the partition, which stops the run with a clear error.
//!
//! With some sample counts unknown (allowed with `--train-num-samples`), whole shards are
//! dealt round-robin instead, and `C` is at most the number of shards.

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
    /// Sample count from `sizes.json`, img2dataset's `*_stats.json` or the Parquet footer,
    /// when known.
    pub samples: Option<u64>,
}

/// How an epoch walks the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOrder {
    /// Every sample once per epoch, in a seeded shard order, cut into equal partitions.
    Shuffled,
    /// Every shard once, in the given order, all in one partition (evaluation).
    Sequential,
    /// Shards drawn with replacement, weighted by their source's weight (OpenCLIP's
    /// `--dataset-resampled`); a partition's stream never ends.
    Resampled,
}

/// A run of consecutive sample positions of one shard, read by one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index of the shard in the shard list.
    pub shard: usize,
    /// Sample positions of the shard before the segment (read past when it is opened).
    pub start: u64,
    /// Where the segment ends (exclusive); `None` reads to the shard's end.
    pub end: Option<u64>,
}

impl Segment {
    fn whole(shard: usize) -> Segment {
        Segment { shard, start: 0, end: None }
    }
}

/// The segments of every partition for one epoch.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    seed: u64,
    epoch: u64,
    order: ShardOrder,
    /// Segments per partition (empty in resampled mode).
    assigned: Vec<Vec<Segment>>,
    /// Cumulative weights of all shards (resampled mode).
    cumulative: Vec<f64>,
}

impl EpochPlan {
    /// The plan of `epoch` for `partitions` partitions over `shards`; see the
    /// [module docs](self).
    pub fn new(shards: &[ShardEntry], partitions: usize, seed: u64, epoch: u64, order: ShardOrder) -> EpochPlan {
        let mut assigned = vec![Vec::new(); partitions.max(1)];
        let mut cumulative = Vec::new();
        match order {
            ShardOrder::Sequential => assigned[0] = (0..shards.len()).map(Segment::whole).collect(),
            ShardOrder::Shuffled => {
                let perm = EpochPermutation::new(mix(&[seed, SHARD_ORDER_STREAM]), epoch, shards.len() as u64);
                let shuffled: Vec<usize> = (0..shards.len()).map(|i| perm.index(i as u64) as usize).collect();
                let sizes: Option<Vec<u64>> = shuffled.iter().map(|&s| shards[s].samples).collect();
                match sizes {
                    Some(sizes) => cut_into_ranges(&shuffled, &sizes, &mut assigned),
                    None => {
                        for (position, &shard) in shuffled.iter().enumerate() {
                            assigned[position % partitions.max(1)].push(Segment::whole(shard));
                        }
                    }
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

    /// Segments in one pass over `partition` (0 in resampled mode, which has no passes).
    pub fn segments(&self, partition: usize) -> u64 {
        self.assigned.get(partition).map_or(0, |s| s.len() as u64)
    }

    /// Whether a partition that reaches its end starts another pass over its segments.
    pub fn repeats(&self) -> bool {
        self.order == ShardOrder::Shuffled
    }

    /// The `i`-th segment read by `partition`, or `None` past its last. Shuffled partitions
    /// never end: segment `i` of pass `i / n` is segment `i % n` of the first.
    pub fn segment(&self, partition: usize, i: u64) -> Option<Segment> {
        match self.order {
            ShardOrder::Resampled => {
                let total = *self.cumulative.last()?;
                let mut rng = Rng::from_key(&[self.seed, RESAMPLE_STREAM, self.epoch, partition as u64, i]);
                let x = rng.next_f64() * total;
                let at = self.cumulative.partition_point(|&c| c <= x);
                Some(Segment::whole(at.min(self.cumulative.len() - 1)))
            }
            ShardOrder::Shuffled => {
                let segments = self.assigned.get(partition).filter(|s| !s.is_empty())?;
                segments.get(usize::try_from(i % segments.len() as u64).ok()?).copied()
            }
            ShardOrder::Sequential => self.assigned.get(partition)?.get(usize::try_from(i).ok()?).copied(),
        }
    }

    /// The samples one pass over `partition` holds according to the known sizes (`None` when
    /// some are unknown, or in resampled mode, where partitions never end).
    pub fn partition_samples(&self, partition: usize, shards: &[ShardEntry]) -> Option<u64> {
        if self.order == ShardOrder::Resampled {
            return None;
        }
        self.assigned
            .get(partition)?
            .iter()
            .map(|seg| Some(seg.end.or(shards[seg.shard].samples)?.saturating_sub(seg.start)))
            .sum()
    }
}

/// Lays the shards (in `order`, of `sizes` samples) end to end and cuts the sequence into
/// `assigned.len()` ranges that differ by at most one sample.
fn cut_into_ranges(order: &[usize], sizes: &[u64], assigned: &mut [Vec<Segment>]) {
    let total: u64 = sizes.iter().sum();
    let parts = assigned.len() as u128;
    let bound = |p: usize| u64::try_from(p as u128 * u128::from(total) / parts).unwrap_or(total);
    let mut at = 0u64;
    let mut p = 0usize;
    for (&shard, &size) in order.iter().zip(sizes) {
        let (lo, hi) = (at, at + size);
        at = hi;
        while p < assigned.len() && lo < hi {
            let (from, to) = (bound(p).max(lo), bound(p + 1).min(hi));
            if from < to {
                let end = if to == hi { None } else { Some(to - lo) };
                assigned[p].push(Segment { shard, start: from - lo, end });
            }
            if bound(p + 1) >= hi {
                break;
            }
            p += 1;
        }
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

/// How the shards can be spread over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Every sample count is known: partitions are cut at sample level, and may outnumber
    /// the shards.
    Samples,
    /// Some counts are unknown: whole shards are dealt, at least one per partition.
    Shards,
    /// Shards are drawn with replacement: any number of partitions.
    Resampled,
}

/// Picks the number of canonical partitions when the configuration leaves it open: the
/// largest `c ≤ max(16, world)` that the world size divides, that divides the global batch,
/// and, while there are at least as many shards as ranks, is at most the number of shards
/// (so that no shard is read by many partitions).
///
/// # Errors
/// [`DataError::InvalidArgument`] naming `train_data` when whole shards are dealt and there
/// are fewer than ranks, or `batch_size` when no such `c` exists.
pub fn auto_partitions(shards: usize, world: usize, global_batch: usize, spread: Spread) -> Result<usize, DataError> {
    let cap = match spread {
        Spread::Resampled => 16.max(world),
        Spread::Samples => 16.max(world).min(shards.max(world)),
        Spread::Shards => 16.max(world).min(shards),
    };
    if cap < world {
        return Err(DataError::InvalidArgument {
            name: "train_data",
            value: format!("{shards} shard(s)"),
            allowed: format!(
                "at least one shard per rank ({world} ranks) when sample counts are unknown: add sizes.json, or use --dataset-resampled"
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
    spread: Spread,
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
    if spread == Spread::Shards && partitions > shards {
        return Err(bad(format!(
            "at most the number of shards ({shards}) while sample counts are unknown; add sizes.json, or use --dataset-resampled"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(sizes: &[Option<u64>]) -> Vec<ShardEntry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &samples)| ShardEntry { url: format!("s{i}"), source: 0, weight: 1.0, samples })
            .collect()
    }

    /// Every (shard, position) each partition reads in one pass, given the true sizes.
    fn positions(plan: &EpochPlan, p: usize, sizes: &[u64]) -> Vec<(usize, u64)> {
        (0..plan.segments(p))
            .filter_map(|i| plan.segment(p, i))
            .flat_map(|seg| (seg.start..seg.end.unwrap_or(sizes[seg.shard])).map(move |x| (seg.shard, x)))
            .collect()
    }

    #[test]
    fn partitions_cut_at_sample_level_are_equal_and_cover_every_sample_once() {
        for (sizes, parts) in
            [(vec![1u64, 100, 7], 2usize), (vec![1, 100, 7], 16), (vec![10; 37], 8), (vec![0, 5, 0, 3], 4)]
        {
            let list = shards(&sizes.iter().map(|&n| Some(n)).collect::<Vec<_>>());
            let total: u64 = sizes.iter().sum();
            let plan = EpochPlan::new(&list, parts, 3, 1, ShardOrder::Shuffled);
            let mut seen = std::collections::BTreeSet::new();
            for p in 0..parts {
                let got = positions(&plan, p, &sizes);
                let n = got.len() as u64;
                assert!(
                    n == total / parts as u64 || n == total.div_ceil(parts as u64),
                    "{sizes:?} / {parts}: partition {p} holds {n}"
                );
                assert_eq!(plan.partition_samples(p, &list), Some(n));
                for x in got {
                    assert!(seen.insert(x), "{x:?} twice");
                }
            }
            assert_eq!(seen.len() as u64, total, "{sizes:?}: every sample once");
        }
    }

    #[test]
    fn epochs_reorder_and_shuffled_partitions_repeat() {
        let list = shards(&[Some(10); 37]);
        let plan = EpochPlan::new(&list, 8, 3, 1, ShardOrder::Shuffled);
        let next = EpochPlan::new(&list, 8, 3, 2, ShardOrder::Shuffled);
        let first = |plan: &EpochPlan| (0..8).map(|p| plan.segment(p, 0)).collect::<Vec<_>>();
        assert_ne!(first(&plan), first(&next), "epochs reorder the shards");
        let n = plan.segments(3);
        assert_eq!(plan.segment(3, n + 1), plan.segment(3, 1), "the second pass reads the same segments");
        let eval = EpochPlan::new(&list, 1, 3, 0, ShardOrder::Sequential);
        assert_eq!(eval.segment(0, 37), None, "an evaluation pass ends");
    }

    #[test]
    fn unknown_sizes_deal_whole_shards() {
        let list = shards(&[None, Some(3), None, None, None]);
        let plan = EpochPlan::new(&list, 2, 3, 0, ShardOrder::Shuffled);
        assert_eq!(plan.segments(0) + plan.segments(1), 5);
        assert!((0..2).all(
            |p| (0..plan.segments(p)).all(|i| plan.segment(p, i).is_some_and(|s| s.start == 0 && s.end.is_none()))
        ));
        assert_eq!(plan.partition_samples(0, &list), None);
    }

    #[test]
    fn resampling_follows_weights() {
        let mut list = shards(&[None, None]);
        list[1].weight = 3.0;
        let plan = EpochPlan::new(&list, 1, 9, 0, ShardOrder::Resampled);
        let ones = (0..4000).filter(|&i| plan.segment(0, i).map(|s| s.shard) == Some(1)).count();
        assert!((2800..3200).contains(&ones), "{ones}");
        assert_eq!(plan.partition_samples(0, &list), None);
    }

    #[test]
    fn partition_counts() {
        assert_eq!(auto_partitions(100, 1, 256, Spread::Samples).expect("ok"), 16);
        assert_eq!(auto_partitions(5, 1, 64, Spread::Samples).expect("ok"), 4);
        assert_eq!(auto_partitions(5, 2, 64, Spread::Shards).expect("ok"), 4);
        assert_eq!(auto_partitions(100, 32, 1024, Spread::Samples).expect("ok"), 32);
        assert_eq!(auto_partitions(1, 2, 64, Spread::Samples).expect("ok"), 2, "one shard, cut for two ranks");
        assert!(auto_partitions(1, 2, 64, Spread::Shards).unwrap_err().to_string().contains("train_data"));
        assert_eq!(auto_partitions(1, 2, 64, Spread::Resampled).expect("ok"), 16);
        assert!(check_partitions(6, 10, 4, 48, Spread::Samples).unwrap_err().to_string().contains("data_partitions"));
        assert!(check_partitions(8, 10, 4, 48, Spread::Samples).is_ok());
        assert!(check_partitions(8, 3, 4, 48, Spread::Samples).is_ok());
        assert!(check_partitions(8, 3, 4, 48, Spread::Shards).is_err());
    }
}
