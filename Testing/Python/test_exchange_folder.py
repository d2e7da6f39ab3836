"""The temporary folder a child process exchanges files through: a file system error while using it is one line,
and the folder never outlives the block (a full disk during the fusion's grow-cut was an internal error)."""
from __future__ import annotations

import errno
import resource
import signal
import subprocess
import sys

import pytest

from ContrastiveSegLib import childprocess
from ContrastiveSegLib.errors import InputError


def test_a_full_disk_in_the_exchange_folder_is_one_line():
    seen = []
    with pytest.raises(InputError) as raised:
        with childprocess.exchange_folder("contrastiveseg-test-", "Grow from seeds") as folder:
            seen.append(folder)
            assert folder.is_dir()
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(raised.value)
    assert message.startswith("cannot write the temporary files of Grow from seeds in ")
    assert "No space left on device" in message and "TMPDIR" in message
    assert "\n" not in message
    assert not seen[0].exists()


def test_other_errors_pass_through_and_the_folder_goes():
    seen = []
    with pytest.raises(ValueError, match="not a file system error"):
        with childprocess.exchange_folder("contrastiveseg-test-", "x") as folder:
            seen.append(folder)
            raise ValueError("not a file system error")
    assert not seen[0].exists()


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_real_short_write_from_numpy_becomes_the_line():
    """numpy's savez past a 4 KiB file-size limit, as run_baseline writes its inputs."""
    script = (
        "import numpy as np\n"
        "from ContrastiveSegLib import childprocess\n"
        "from ContrastiveSegLib.errors import InputError\n"
        "try:\n"
        "    with childprocess.exchange_folder('contrastiveseg-test-', 'Grow from seeds') as folder:\n"
        "        np.savez(folder / 'inputs.npz', image=np.zeros((64, 64, 64), np.float32))\n"
        "except InputError as error:\n"
        "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=_limit_file_size,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cannot write the temporary files of Grow from seeds in "), done.stdout
    assert "File too large" in done.stdout
