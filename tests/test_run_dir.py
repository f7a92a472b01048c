"""The output folder of a run (toy engine): default name, auto-resume guard, finished runs, Ctrl-C, metrics after a
resume, log.txt, progress counts, and the --help text of every engine."""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import time

import pytest
import yaml
from test_train_loop import _argv, _ToyEngine

from lavila.train.loop import CHECKPOINT, TrainingError, build_parser, main, run
from lavila.train.preemption import PreemptionFlag
from lavila.utils.checkpoint import load_checkpoint
from lavila.utils.logging import MetricLogger, progress, read_metrics

pytestmark = pytest.mark.usefixtures("lavila_log_to_caplog")


def test_output_dir_defaults_to_a_named_folder_under_work_dirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run(_ToyEngine(), ["--device", "cpu", "--workers", "0", "--epochs", "1"])
    assert summary["output_dir"] == os.path.join("work_dirs", "toy_CLIP_VITB16")
    assert (tmp_path / "work_dirs" / "toy_CLIP_VITB16" / CHECKPOINT).is_file()
    assert not (tmp_path / CHECKPOINT).exists()


def test_auto_resume_into_a_different_run_stops_listing_the_differences(tmp_path, caplog):
    assert run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"), stop_after_epochs=1)["status"] == "stopped"
    with pytest.raises(TrainingError) as info:
        run(_ToyEngine(), _argv(tmp_path, "--epochs", "2", "--lr", "0.2", "--batch-size", "8"))
    message = str(info.value)
    assert "--lr 0.1 -> 0.2" in message and "--batch-size 4 -> 8" in message
    assert "new --output-dir" in message and "--resume-anyway" in message and "\n" not in message
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1  # nothing was touched
    # same flags: resumes; --resume-anyway: continues with the new values
    with caplog.at_level(logging.INFO, logger="lavila"):
        summary = run(_ToyEngine(), _argv(tmp_path, "--epochs", "3", "--resume-anyway"))
    assert summary["status"] == "finished" and load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 3
    assert "--epochs 2 -> 3" in caplog.text


def test_resume_logs_epoch_and_step_and_finished_run_exits_zero(tmp_path, caplog):
    run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"), stop_after_epochs=1)
    with caplog.at_level(logging.INFO, logger="lavila"):
        run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"))
    assert f"auto-resuming from {tmp_path / CHECKPOINT}: epoch 1, step 0/4 of the epoch, optimiser step 4" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lavila"):
        assert main(_ToyEngine(), _argv(tmp_path, "--epochs", "2")) == 0
    assert "is finished (2/2 epochs): nothing to do" in caplog.text
    assert len(read_metrics(tmp_path, "step")) == 8  # nothing trained again


def test_metrics_have_no_duplicates_after_a_resume(tmp_path):
    run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"), stop_after_epochs=1)
    saved = tmp_path / "epoch1.pt"
    shutil.copy(tmp_path / CHECKPOINT, saved)
    run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"))
    # as if killed after writing epoch 1's records but before its checkpoint: resume from the epoch-1 checkpoint
    shutil.copy(saved, tmp_path / CHECKPOINT)
    run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"))
    assert [r["step"] for r in read_metrics(tmp_path, "step")] == list(range(1, 9))
    epochs = [(r["type"], r["epoch"]) for r in read_metrics(tmp_path) if r["type"] != "step"]
    assert len(epochs) == len(set(epochs)) == 4  # train + epoch record for epochs 0 and 1


def test_tensorboard_hides_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricLogger(tmp_path)
    for step in range(1, 9):  # the interrupted run got to step 8, its checkpoint is at step 5
        first.log_step(step, {"loss": 1.0})
    first.close()
    # event files are named by the second they were opened in (then a per-process counter, which sorts 10 before 9):
    # the relaunch opens its file in a later second, as a real relaunch does
    time.sleep(1.1)
    resumed = MetricLogger(tmp_path)
    resumed.resume_at(global_step=5, epoch=1)
    for step in range(6, 10):
        resumed.log_step(step, {"loss": 2.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert scalars == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 10)]


def test_console_log_is_written_to_the_output_folder(tmp_path):
    run(_ToyEngine(), _argv(tmp_path, "--epochs", "1"))
    text = (tmp_path / "log.txt").read_text()
    assert "toy: 16 training samples" in text and "epoch 0 (test_ metrics: fraction): test_acc" in text
    logging.getLogger("lavila").info("after the run")
    assert "after the run" not in (tmp_path / "log.txt").read_text()  # detached when the run ends


def test_progress_counts_within_the_full_epoch():
    out = io.StringIO()
    assert list(progress(range(2), total=6, desc="epoch 0", every=1, start=4, enabled=True, file=out)) == [0, 1]
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["epoch 0 5/6", "epoch 0 6/6"]


def test_ctrl_c_sets_the_flag_and_a_second_one_aborts(capsys):
    flag = PreemptionFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signal == signal.SIGINT
        assert "Ctrl-C again aborts" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _CtrlCAtStep3(_ToyEngine):
    calls = 0

    def train_step(self, *a, **k):
        self.calls += 1
        if self.calls == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next bytecode: inside step 3
        return super().train_step(*a, **k)


def test_ctrl_c_saves_a_checkpoint_and_exits_zero_like_sigterm(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lavila"):
        assert main(_CtrlCAtStep3(), _argv(tmp_path, "--epochs", "2")) == 0
    saved = load_checkpoint(tmp_path / CHECKPOINT)
    assert saved["global_step"] == 3 and saved["epoch"] == 0 and saved["step_in_epoch"] == 3
    assert f"stopped by signal {int(signal.SIGINT)}" in caplog.text
    assert run(_ToyEngine(), _argv(tmp_path, "--epochs", "2"))["global_step"] == 8


# ---- --help ---------------------------------------------------------------------------------------------------


def _engines():
    from lavila.train.finetune_classification import ClassificationEngine
    from lavila.train.finetune_retrieval import RetrievalEngine
    from lavila.train.pretrain import PretrainEngine

    return [PretrainEngine(), RetrievalEngine(), ClassificationEngine()]


@pytest.mark.parametrize("engine", _engines(), ids=lambda e: e.name)
def test_every_flag_has_help_and_shows_its_default_once(engine):
    import argparse

    parser = build_parser(engine)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help text"
    text = parser.format_help()
    for flag in ("--epochs", "--lr", "--wd", "--eval-freq", "--norm-style"):
        block = text.split(f"  {flag} ", 1)[1].split("\n  -", 1)[0]
        assert "default:" in block, (flag, block)
    device = text.split("  --device DEVICE", 1)[1].split("\n  -", 1)[0]
    assert device.count("default") == 1, device
    workers = text.split("  -j WORKERS, --workers WORKERS", 1)[1].split("\n  -", 1)[0]
    assert "CPUs available" in workers


def test_margin_help_and_workers_default_follow_the_cpus(monkeypatch):
    from lavila.train.finetune_retrieval import RetrievalEngine
    from lavila.train.flags import default_workers

    assert "default: 0.2" in build_parser(RetrievalEngine()).format_help().split("\n  --margin MARGIN", 1)[1][:200]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers() == max(len(os.sched_getaffinity(0)) // 2, 1)


def test_list_models_prints_the_registry(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser(_ToyEngine()).parse_args(["--list-models"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "CLIP_TimeMamba_like_timesformer" in out and "CLIP_ViViM_tiny" in out


def test_num_frames_is_an_alias_of_clip_length():
    assert build_parser(_ToyEngine()).parse_args(["--num-frames", "8"]).clip_length == 8


def test_plot_draws_loss_lr_and_metric_labelled_by_the_real_loss(tmp_path):
    pytest.importorskip("matplotlib")
    from lavila import plot

    for name, key in (("mir", "max_margin_loss"), ("cls", "acc1")):
        logger = MetricLogger(tmp_path / name, tensorboard=False)
        for step in (1, 2):
            logger.log_step(step, {"loss": 1.0 / step, key: 0.5, "lr": 1e-3}, epoch=0)
        metric = "test_avg_map" if name == "mir" else "test_acc1"
        logger.log_epoch(0, {metric: 0.3})
    assert plot.read_run(tmp_path / "mir")["loss_name"] == "max-margin ranking loss"
    cls = plot.read_run(tmp_path / "cls")
    assert cls["loss_name"].startswith("cross-entropy") and cls["metric"] == "acc1" and cls["unit"] == "percent"
    assert plot.main([str(tmp_path / "mir"), str(tmp_path / "cls"), "--out", str(tmp_path / "plots")]) == 0
    assert all((tmp_path / "plots" / f"{n}.png").stat().st_size > 1000 for n in ("loss", "lr", "metric"))


@pytest.mark.parametrize("config, metric, unit", [
    ({"dataset": "ego4d", "dataset_val": "egtea"}, "mean_acc", "fraction"),
    ({"dataset": "ego4d", "dataset_val": "egomcq"}, "intra_video", "fraction"),
    ({"dataset": "egtea"}, "mean_acc", "fraction"),
    ({"dataset": "charades_ego"}, "map", "fraction")])
def test_plot_follows_the_runs_evaluation_task(tmp_path, config, metric, unit):
    """A run validated on EGTEA / EgoMCQ / Charades-Ego plots that task's tracked metric (not avg_map / accuracy)."""
    from lavila import plot

    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.log_step(1, {"loss": 1.0, "clip_acc": 0.5, "lr": 1e-3}, epoch=0)
    for epoch in (0, 1):
        logger.log_epoch(epoch, {"test_accuracy": 0.9, "test_acc1": 0.8, f"test_{metric}": 0.1 + 0.2 * epoch})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "m", **config}))
    run = plot.read_run(tmp_path)
    assert (run["metric"], run["unit"], run["value"]) == (metric, unit, pytest.approx([0.1, 0.3]))


def test_unreadable_evaluation_sample_does_not_blame_the_skip_policy(tmp_path, capsys):
    from test_train_loop import _Points, _Unreadable

    class BadVal(_ToyEngine):
        def build_datasets(self, args):
            return _Points(), _Unreadable(8)

    assert main(BadVal(), _argv(tmp_path, "--epochs", "1")) != 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert "evaluation: cannot decode video /data/broken.mp4: file not found" in line
    assert "--skip-policy raise" not in line and "--val-metadata" in line
