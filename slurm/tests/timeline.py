"""Prints the timeline of a Slurm training job from its log (slurm/train.sbatch's lines and the
workers' JSON log lines) and the test's own event lines, in time order:

    python3 slurm/tests/timeline.py logs/clipfleet_12.out events.log

Lines of the form `[2026-01-01T12:00:00+0000] who: text` are taken as they are; JSON lines of
rank 0 are kept when they mark a start, a checkpoint, a stop or a resume.
"""
import datetime as dt
import json
import re
import sys

BRACKETED = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4})\] (.*)$")
KEEP = ("srun exited", "stop requested", "SIGTERM", "requeue", "==== job", "training finished", "not requeued", "failed", "signal", "StartTime", "state")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def events(path: str):
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = BRACKETED.match(line)
        if m:
            if any(k in m.group(2) for k in KEEP) and "command:" not in m.group(2):
                yield parse_time(m.group(1)[:-2] + ":" + m.group(1)[-2:]), m.group(2)
            continue
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("span", {}).get("rank", 0) != 0:
            continue
        fields = record.get("fields", {})
        message = fields.get("message", "")
        if message == "training" or message == "resumed" or message == "checkpoint" or "stop" in message or message.startswith("Slurm job"):
            detail = " ".join(f"{k}={v}" for k, v in fields.items() if k in ("step", "path", "checkpoint", "slurm_restart_count", "signal"))
            yield parse_time(record["timestamp"]), f"worker rank 0: {message} {detail}".rstrip()


def main() -> int:
    merged = sorted((e for path in sys.argv[1:] for e in events(path)), key=lambda e: e[0])
    if not merged:
        print("(no events)")
        return 1
    start = merged[0][0]
    for when, what in merged:
        print(f"  {when.astimezone(dt.timezone.utc).strftime('%H:%M:%S.%f')[:-3]}  +{(when - start).total_seconds():6.2f}s  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
