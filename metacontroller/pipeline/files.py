"""Run-folder files: JSON written atomically and read with the file named in any error,
and a lock that keeps two runs out of one folder."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from metacontroller.checkpoint import atomic_path

LOCK_FILE = 'run.lock'


def write_json(path: Path, data, indent: int | None = 2):
    """An interrupted run leaves the old file or the new one, never a truncated one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent = indent))


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not valid JSON ({error}): delete it, or redo the phase that wrote it with --force') from error


@contextmanager
def run_lock(run_dir: Path):
    """Hold run_dir's lock file for the block; a second run on the folder is refused. The
    operating system releases the lock when the process ends, so a crash leaves none behind."""
    with open(run_dir / LOCK_FILE, 'a+') as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            raise ValueError(f'{run_dir} is in use by another run (process {file.read().strip() or "?"}): '
                             f'wait for it to finish, or pass another --run-dir') from None
        file.truncate(0)
        file.write(str(os.getpid()))
        file.flush()
        yield
