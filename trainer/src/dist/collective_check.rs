//! A self-check of a process group's collectives with values every rank can predict, in f32
//! and f64: what `clipfleet-dist-check` runs under `mpirun`, `srun` or on a GPU, and what the
//! MPI integration tests assert.

use tch::{Device, Kind, Tensor};

use super::{DistError, ProcessGroup, ReduceOp};

/// Runs every collective of `group` on tensors on `device` and compares each result with its
/// expected value; returns one line per collective checked, or the first mismatch.
pub fn check_collectives(group: &dyn ProcessGroup, device: Device) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for kind in [Kind::Float, Kind::Double] {
        lines.extend(check_kind(group, device, kind).map_err(|e| format!("rank {}: {kind:?}: {e}", group.rank()))?);
    }
    group.barrier().map_err(|e| e.to_string())?;
    lines.push("barrier ok".into());
    Ok(lines)
}

fn check_kind(group: &dyn ProcessGroup, device: Device, kind: Kind) -> Result<Vec<String>, String> {
    let d = |e: DistError| e.to_string();
    let (r, w) = (group.rank() as f64, group.world_size() as i64);
    let wf = w as f64;
    let opts = (kind, device);
    let mut lines = Vec::new();

    // all_gather: rank r contributes [2, 3] filled with 100 r + column index.
    let local = Tensor::arange(3, opts).unsqueeze(0).repeat([2, 1]) + 100.0 * r;
    let got = group.all_gather(&local).map_err(d)?;
    let expected = Tensor::arange(3, opts).unsqueeze(0).repeat([2 * w, 1])
        + Tensor::arange(w, opts).repeat_interleave_self_int(2, 0, None).unsqueeze(1) * 100.0;
    compare("all_gather", &got, &expected)?;
    lines.push(format!("all_gather {kind:?} ok"));

    // all_reduce: rank r holds arange(5) + r; the sum is w·arange + w(w−1)/2.
    let sum = Tensor::arange(5, opts) * wf + wf * (wf - 1.0) / 2.0;
    for (op, expected) in [(ReduceOp::Sum, sum.copy()), (ReduceOp::Avg, &sum / wf)] {
        let mut t = Tensor::arange(5, opts) + r;
        group.all_reduce(&mut t, op).map_err(d)?;
        compare("all_reduce", &t, &expected)?;
        lines.push(format!("all_reduce {op:?} {kind:?} ok"));
    }

    // broadcast from the last rank, into a leaf that requires grad (as parameters are).
    let mut t = Tensor::full([4], r, opts).set_requires_grad(true);
    group.broadcast(&mut t, group.world_size() - 1).map_err(d)?;
    compare("broadcast", &t, &Tensor::full([4], wf - 1.0, opts))?;
    lines.push(format!("broadcast {kind:?} ok"));

    // reduce_scatter: rank r holds rows i = 0..2w with values 100 r + i; rank q gets the sums of
    // rows 2q, 2q+1: 100 w(w−1)/2 + w i.
    let input = Tensor::arange(2 * w, opts).unsqueeze(1).repeat([1, 3]) + 100.0 * r;
    let rows = Tensor::arange_start(2 * r as i64, 2 * r as i64 + 2, opts).unsqueeze(1).repeat([1, 3]);
    let sum = rows * wf + 100.0 * wf * (wf - 1.0) / 2.0;
    for (op, expected) in [(ReduceOp::Sum, sum.copy()), (ReduceOp::Avg, &sum / wf)] {
        let got = group.reduce_scatter(&input, op).map_err(d)?;
        compare("reduce_scatter", &got, &expected)?;
        lines.push(format!("reduce_scatter {op:?} {kind:?} ok"));
    }
    Ok(lines)
}

fn compare(op: &str, got: &Tensor, expected: &Tensor) -> Result<(), String> {
    if got.size() != expected.size() {
        return Err(format!("{op}: shape {:?}, expected {:?}", got.size(), expected.size()));
    }
    let diff = (got - expected).abs().max().double_value(&[]);
    // The values are small integers and halves: exact in f32 and f64.
    if diff != 0.0 {
        return Err(format!("{op}: max |got − expected| = {diff}\ngot {got}\nexpected {expected}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{SingleGroup, WorldInfo};

    #[test]
    fn the_single_group_passes_the_check() {
        let group = SingleGroup::new(&WorldInfo::single()).unwrap();
        let lines = check_collectives(&group, Device::Cpu).unwrap();
        assert_eq!(lines.len(), 13, "{lines:?}");
    }
}
