"""The state of a run, beside its output, so a stopped conversion can go on with --resume.

OUT.mpq2-resume/ holds the output being written (output.gguf.part: header plus every tensor
finished so far), state.json (the run's fingerprint, the stage reached, the summary rows) and
the activations the next block needs (acts-N.pt), and with a tied embedding the float model's
output of every block not yet quantized (float-N.pt, from the float pass). A checkpoint is taken after each stage: the
part file is synced, the activations saved, then state.json replaced atomically, so a crash at
any moment leaves the previous checkpoint intact. A finished run renames the part file onto
OUT and removes the directory; so does a run stopped before its first checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from .errors import ConvertError

STATE = "state.json"


def input_identity(model: Path) -> list:
    """Name, size and modification time of every input file: a changed input is a new run."""
    files = sorted(p for p in model.iterdir() if p.is_file()) if model.is_dir() else [model]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class RunState:
    def __init__(self, out: Path, options: dict, identity: list):
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + ".mpq2-resume")
        self.part = self.dir / "output.gguf.part"
        self.options = options
        self.fingerprint = hashlib.sha256(json.dumps([options, identity], sort_keys=True).encode()).hexdigest()
        self.saved: dict | None = None
        self.kept: dict = {}              # fixed once per run, e.g. --bpw's tensor types: in every checkpoint

    # --- at the start

    def open(self, resume: bool, force: bool) -> dict | None:
        """Checks the state against the request; returns the saved state to resume from, or
        None for a fresh start (the directory is then created empty)."""
        has_state = (self.dir / STATE).is_file()
        if resume:
            if not has_state:
                raise ConvertError(f"--resume: no interrupted run of {self.out} to resume "
                                   f"({self.dir} does not exist); run without --resume")
            saved = json.loads((self.dir / STATE).read_text())
            if saved["fingerprint"] != self.fingerprint:
                raise ConvertError(f"--resume: {self.dir} was started with other options or inputs "
                                   f"({self._difference(saved)}); resume with the same command, "
                                   f"or start over with --force")
            if not self.part.is_file():
                raise ConvertError(f"--resume: {self.part} is missing; start over with --force")
            self.saved = saved
            return saved
        if self.dir.exists():
            if not force:
                raise ConvertError(f"{self.dir} holds an interrupted run of this output: pass --resume to "
                                   f"continue it, or --force to start over")
            shutil.rmtree(self.dir)
        self.dir.mkdir()
        return None

    def _difference(self, saved: dict) -> str:
        old = saved.get("options", {})
        diff = [k for k in sorted(set(old) | set(self.options)) if old.get(k) != self.options.get(k)]
        return ("options differ: " + ", ".join(f"--{k.replace('_', '-')}" for k in diff)) if diff \
            else "the input files changed"

    def activations(self, device) -> dict:
        return torch.load(self.dir / self.saved["acts"], map_location=device, weights_only=False)

    # --- during the run

    def checkpoint(self, stream, stage: dict, acts: dict) -> None:
        """Everything up to `stream.next` is final; `acts` is what the next stage needs."""
        stream.sync()
        n = (self.saved or {}).get("seq", 0) + 1
        name = f"acts-{n}.pt"
        torch.save(acts, self.dir / name)
        state = {"fingerprint": self.fingerprint, "options": self.options, "seq": n, "acts": name,
                 "next_tensor": stream.next, "bytes": stream.position, "data_start": stream.data_start, **self.kept, **stage}
        tmp = self.dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE)
        old = (self.saved or {}).get("acts")
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)
        self.saved = state

    # --- the float model's hidden states, written by a float pass for the blocks to read back

    def spool_float(self, i: int, hidden: list[torch.Tensor]) -> None:
        torch.save(hidden, self.dir / f"float-{i}.pt")

    def spooled_float(self, i: int, device) -> list[torch.Tensor] | None:
        """Block i's float outputs if a float pass left them (each is read once, then removed)."""
        path = self.dir / f"float-{i}.pt"
        if not path.is_file():
            return None
        hidden = torch.load(path, map_location=device, weights_only=True)
        path.unlink()
        return hidden

    # --- at the end

    def finish(self, mode: int) -> None:
        os.chmod(self.part, mode)
        os.replace(self.part, self.out)
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        """After a bad input: nothing of the run is worth keeping."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def stopped(self) -> str:
        """After an interrupt or error: keeps a checkpointed state, removes an empty one.
        Returns what to tell the user."""
        if self.saved is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return "no output written"
        return (f"no output written; the finished work ({self.saved.get('done', '')}) is kept in {self.dir}: "
                f"run the same command with --resume to continue, or delete that directory")
