"""Training metrics: <output_dir>/metrics.jsonl (one JSON object per log step), metrics.csv, optional
TensorBoard, and a tqdm progress bar with loss, lr, tokens/s and ETA. Only the main process writes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm
from csdistill.files import atomic_open, atomic_write_text
from csdistill.errors import UserError

CORE_COLUMNS = ("step", "loss", "lr", "tokens_per_s", "elapsed", "val_loss")


def _replace(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A half-written last line (a run killed mid-append) is dropped with a
    warning; a bad line elsewhere is an error naming file:line."""
    from csdistill.errors import UserError

    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise UserError("not an object")
        except ValueError:
            if number == len(lines):
                print(f"csdistill: warning: {path}:{number}: dropping a half-written last line", file=sys.stderr)
                continue
            raise UserError(f"{path}:{number}: not a JSON object; fix or delete that line") from None
        rows.append(row)
    return rows


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, enabled: bool, total_steps: int, start_step: int,
                 progress: bool, tensorboard: bool):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.history: list[dict] = []
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history = self._read_history(start_step)
        self._rewrite()  # a resumed run drops the rows a killed run logged after its last checkpoint
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tensorboard"))

    def _read_history(self, start_step: int) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        if start_step == 0 or not path.is_file():
            return []
        rows = read_metrics(path)
        return [row for row in rows if row.get("step", 0) <= start_step]

    def _rewrite(self) -> None:
        _replace(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self._write_csv()

    def _write_csv(self) -> None:
        # Columns vary (val_loss and callback metrics appear only on eval steps): rewrite the small file.
        extra = sorted({k for row in self.history for k in row} - set(CORE_COLUMNS))
        with atomic_open(self.dir / "metrics.csv", "w") as f:
            writer = csv.DictWriter(f, fieldnames=[*CORE_COLUMNS, *extra], restval="")
            writer.writeheader()
            writer.writerows(self.history)

    def log(self, row: dict) -> None:
        """Append one record (must hold 'step'); scalars only."""
        if not self.enabled:
            return
        self.history.append(row)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()
        if self.bar is not None:
            shown = {k: row[k] for k in ("loss", "val_loss", "lr", "tokens_per_s") if k in row}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
