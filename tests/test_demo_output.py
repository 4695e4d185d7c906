"""What `make demo` prints of a job's output (issue 20: mdir's lines on screen, Ray's noise
only in the job log), and the labelled grids it writes."""

from __future__ import annotations

import numpy as np

from mdir.demo import shown_line
from mdir.viz import labelled_grid

RAY_LINES = [
    "2026-11-30 15:38:23,226\tINFO cli.py:42 -- \x1b[37mJob submission server address\x1b[39m: http://127.0.0.1:36355",
    "2026-11-30 15:38:23,287\tINFO packaging.py:385 -- Ignoring upload to cluster for these files: [PosixPath('.venv/.gitignore')]",
    "2026-11-30 15:38:23,226\tWARNING working_dir.py:101 -- Directory '.git' is now ignored by default",
    "\x1b[36m(TrainController pid=2719)\x1b[0m Requesting resources: {'CPU': 0.5} * 2",
    "\x1b[36m(TrainController pid=2719)\x1b[0m [2026-11-30 15:39:14,686 E 2719 2757] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' has constructor arguments",
    "\x1b[36m(RayTrainWorker pid=2879)\x1b[0m   color_warning(",
    "Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 13934.56it/s]",
    'MDIR_RESULT {"model_uri": "models:/x@candidate"}',
]
MDIR_LINE = (
    "\x1b[36m(RayTrainWorker pid=2879)\x1b[0m 2026-11-30 15:39:35,050 mdir.training INFO "
    "step 20/1440 epoch 1/30 D_A=0.6047 | 8.0 images/s | ETA 6m10s"
)


def test_demo_shows_mdir_lines_and_outcome_only():
    assert all(shown_line(line) is None for line in RAY_LINES)
    assert (
        shown_line(MDIR_LINE)
        == "mdir.training INFO step 20/1440 epoch 1/30 D_A=0.6047 | 8.0 images/s | ETA 6m10s"
    )
    done = (
        "2026-11-30 15:56:40,001\tSUCC cli.py:60 -- \x1b[32mJob 'raysubmit_abc' succeeded\x1b[39m"
    )
    assert shown_line(done) == "Job 'raysubmit_abc' succeeded"
    assert shown_line("Traceback (most recent call last):") is not None
    assert shown_line("RuntimeError: boom") == "RuntimeError: boom"


def test_labelled_grid_places_tiles_under_titles():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 255
    g = labelled_grid(
        [[red, blue], [blue, red]], ["source", "translation"], ["a", "b"], title="step 5"
    )
    h, w, _ = g.shape
    assert h > 2 * 128 and w > 2 * 128  # tiles upscaled to ≥ 128 px, plus labels
    # the bottom-right tile is red, the one left of it blue (row 2: blue | red)
    assert tuple(g[h - 10, w - 10]) == (255, 0, 0)
    assert tuple(g[h - 10, w - 10 - 132]) == (0, 0, 255)
    # the label areas hold dark text pixels
    assert (g[:20].min(-1) < 100).any() and (g[h // 2 :, :12].min(-1) < 100).any()


def test_outcome_lines_of_the_jobs_sdk_are_shown():
    """`mdir.dev.jobs` ends with the CLI's outcome line (no timestamp); the demo shows it, and
    the submission line stays in the log only."""
    assert shown_line("Job 'raysubmit_abc' failed\n") == "Job 'raysubmit_abc' failed"
    assert shown_line("Job 'raysubmit_abc' succeeded\n") == "Job 'raysubmit_abc' succeeded"
    assert shown_line("Job 'raysubmit_abc' submitted successfully\n") is None
