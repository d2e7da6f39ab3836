"""Pretraining data, loop and command: streaming with bounded memory, checkpoints and resume, bad input, and an
encoder file that fine-tuning loads."""
from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ContrastiveSegLib.cli_pretrain import (add_methods_parser, add_pretrain_parser, parse_params, read_tags,
                                           run_methods, run_pretrain)
from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.data.unlabelled import ArrayVolume, SliceStream, StreamConfig, check_sources, find_volumes
from ContrastiveSegLib.errors import Cancelled, InputError
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.methods import get_method
from ContrastiveSegLib.model import load_encoder_into
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.training.pretrain import PretrainConfig, pretrain
from ContrastiveSegLib.zoo.weights import load_weights

torch.set_num_threads(1)
FEATURES = "8,8,16,16,32"


def write_volume(path, shape, seed=0, tag=None):
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 20, shape).astype(np.float32)
    array[:, : shape[1] // 4] = -1000  # some air, so the body mask and superpixels have an outside
    image = sitk.GetImageFromArray(array)
    if tag:
        image.SetMetaData("site", tag)  # NRRD and MHA keep custom keys (NIfTI does not)
    sitk.WriteImage(image, str(path))
    return array


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlabelled")
    write_volume(folder / "a.nrrd", (12, 32, 32), 0, tag="ct")
    write_volume(folder / "b.nii.gz", (10, 24, 40), 1)
    (folder / "sub").mkdir()
    write_volume(folder / "sub" / "c.mha", (8, 48, 32), 2, tag="mr")
    (folder / "README.txt").write_text("not a volume")
    (folder / ".hidden.nii.gz").write_bytes(b"junk")
    return folder


def cli(argv, events=None, cancel=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_pretrain_parser(sub)
    add_methods_parser(sub)
    args = parser.parse_args(argv)
    runner = run_pretrain if args.command == "pretrain" else run_methods
    return runner(args, None if events is None else events.append, cancel)


def pretrain_args(data_dir, output, method="simclr", *extra):
    return ["pretrain", str(data_dir), "--method", method, "-o", str(output), "--batch-size", "4", "--patch", "32",
            "--features", FEATURES, "--device", "cpu", "--cache-dir", str(output.parent / "cache"), *extra]


# ----------------------------------------------------------------------------------------------- data
def test_find_volumes_expands_folders_and_skips_the_rest(data_dir):
    names = sorted(v.path.name for v in find_volumes([data_dir]))
    assert names == ["a.nrrd", "b.nii.gz", "c.mha"]
    with pytest.raises(InputError, match="not found"):
        find_volumes([data_dir / "missing.nii.gz"])
    (data_dir.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(InputError, match="holds no volume"):
        find_volumes([data_dir.parent / "empty"])


def test_dicom_series_are_found_read_and_tagged(tmp_path):
    from test_io import _write_dicom_series  # one 2D file per slice with the tags GDCM reads back

    from ContrastiveSegLib.io.volume import Volume

    array = np.random.default_rng(0).integers(-100, 200, (5, 32, 24)).astype(np.int16)
    (tmp_path / "patients").mkdir()
    _write_dicom_series(Volume(array, spacing=(0.8, 0.8, 2.0)), tmp_path / "patients" / "p1")
    sources = find_volumes([tmp_path / "patients"])
    assert len(sources) == 1 and len(sources[0].files) == 5
    info = check_sources(sources, axis=0, tag_key="0008|0060")
    assert info.shapes == ((5, 32, 24),) and info.tag_names == ("CT",)
    np.testing.assert_array_equal(sources[0].read()[0], array)


def test_check_sources_reads_headers_and_tags(data_dir):
    sources = find_volumes([data_dir])
    info = check_sources(sources, axis=0, tag_key="site")
    assert info.shapes == ((12, 32, 32), (10, 24, 40), (8, 48, 32))
    assert info.tag_names == ("ct", "mr") and info.tags == (0, -1, 1)


def test_bad_volumes_fail_early_with_one_line(tmp_path):
    write_volume(tmp_path / "small.nii.gz", (20, 8, 40))
    with pytest.raises(InputError, match="8 x 40 pixels; the network needs at least 16 x 16") as error:
        check_sources(find_volumes([tmp_path / "small.nii.gz"]), axis=0)
    assert "\n" not in str(error.value)
    check_sources(find_volumes([tmp_path / "small.nii.gz"]), axis=1)  # 20 x 40 slices along j are fine
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="cannot read") as error:
        check_sources(find_volumes([tmp_path / "corrupt.nii.gz"]))
    assert "\n" not in str(error.value)


def test_stream_batches_stratified_slices_with_meta_labels(data_dir):
    sources = find_volumes([data_dir])
    config = StreamConfig(patch=32, slices_per_volume=4, prefetch=False)
    with SliceStream(sources, InputSpec(), 0, config, seed=1) as stream:
        batch = stream.batch(8)
    assert batch["image"].shape == (8, 5, 32, 32) and batch["image"].dtype == torch.float32
    for volume in batch["volume"].unique():
        positions = batch["position"][batch["volume"] == volume]
        assert sorted((positions * 4).floor().long().tolist()) == [0, 1, 2, 3]  # one slice per quarter
    assert set(batch["tag"].tolist()) <= {-1}  # no tag key: unknown


def test_stream_pads_small_slices_and_extends_coordinates():
    array = np.random.default_rng(0).normal(size=(4, 24, 32)).astype(np.float32)
    stream = SliceStream([ArrayVolume(array)], InputSpec(), 0, StreamConfig(patch=32, prefetch=False))
    image = stream.batch(1)["image"][0]
    rows = image[3, :, 0]  # the y coordinate channel
    assert rows[0] == pytest.approx(-1.0) and rows[23] == pytest.approx(1.0)
    assert rows[31] == pytest.approx(1.0 + 8 * 2 / 23)  # continues linearly into the padding
    assert torch.all(image[:3, 24:] == stream.pool[0].low)  # padded with the background


def test_stream_memory_is_bounded_and_volumes_cycle():
    volumes = [ArrayVolume(np.full((4, 16, 16), i, np.float32) + np.random.default_rng(i).normal(size=(4, 16, 16)),
                           name=f"v{i}") for i in range(5)]
    config = StreamConfig(patch=16, slices_per_volume=2, pool_size=2, draws_per_volume=2)
    with SliceStream(volumes, InputSpec(), 0, config) as stream:
        seen = set()
        for _ in range(12):
            seen.update(stream.batch(2)["volume"].tolist())
            assert len(stream.pool) == 2  # plus at most one volume loading in the background
        assert seen == {0, 1, 2, 3, 4} and stream.loads >= 6


def test_sharding_gives_ranks_disjoint_volumes():
    volumes = [ArrayVolume(np.zeros((2, 16, 16), np.float32), name=f"v{i}") for i in range(5)]
    config = StreamConfig(patch=16, prefetch=False)
    shards = [SliceStream(volumes, InputSpec(), 0, config, seed=3, rank=r, world_size=2).shard for r in (0, 1)]
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(5))
    # Fewer volumes than ranks: every rank sees every volume (with its own slice draws).
    few = [SliceStream(volumes[:1], InputSpec(), 0, config, rank=r, world_size=2).shard for r in (0, 1)]
    assert few == [[0], [0]]


def test_stream_superpixels_and_labels():
    array = np.random.default_rng(0).normal(100, 10, (3, 32, 32)).astype(np.float32)
    array[:, :8] = -1000
    labels = np.full(array.shape, IGNORE, np.int64)
    labels[1, 10:20, 10:20] = 1
    config = StreamConfig(patch=32, superpixels=True, labels=True, slices_per_volume=3, prefetch=False)
    stream = SliceStream([ArrayVolume(array, labels), ArrayVolume(array)], InputSpec(), 0, config)
    batch = stream.batch(6)
    ids = batch["superpixels"]
    for crop in ids:
        values = crop[crop >= 0].unique()
        assert values.tolist() == list(range(len(values)))  # renumbered 0.. per crop
        assert (crop[:8] == -1).all()  # the air above the body is outside every superpixel
    with_labels = batch["labels"][batch["volume"] == 0]
    assert {int(v) for v in with_labels.unique()} <= {1, IGNORE} and (with_labels == 1).sum() == 100
    assert (batch["labels"][batch["volume"] == 1] == IGNORE).all()


# ----------------------------------------------------------------------------------------------- the loop
def test_learning_rate_schedule_hand_computed():
    config = PretrainConfig(steps=100, learning_rate=1.0, warmup_fraction=0.1)
    assert config.learning_rate_at(0.05) == pytest.approx(0.5)
    assert config.learning_rate_at(0.1) == pytest.approx(1.0)
    assert config.learning_rate_at(0.55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert config.learning_rate_at(1.0) == pytest.approx(0.01)
    assert PretrainConfig().steps == 2000 and PretrainConfig(minutes=1).steps is None


def small_stream(method):
    volumes = [ArrayVolume(np.random.default_rng(i).normal(size=(6, 32, 32)).astype(np.float32)) for i in range(2)]
    keys = method.required_keys
    config = StreamConfig(patch=32, prefetch=False, superpixels="superpixels1" in keys, labels="labels1" in keys)
    return SliceStream(volumes, InputSpec(), 0, config)


def test_minutes_bound_and_cancel():
    method = get_method("simclr", features=(8, 8, 16, 16, 32))
    result = pretrain(method, small_stream(method), PretrainConfig(steps=10_000, minutes=0.004, batch_size=2),
                      torch.device("cpu"))
    assert result.stopped == "minutes" and 0 < result.steps < 10_000 and result.seconds >= 0.24
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        pretrain(method, small_stream(method), PretrainConfig(steps=5, batch_size=2), torch.device("cpu"),
                 cancel=cancel)


def test_pretrain_writes_an_encoder_that_fine_tuning_loads(data_dir, tmp_path):
    events = []
    assert cli(pretrain_args(data_dir, tmp_path / "enc.safetensors", "simclr", "--steps", "3",
                             "--param", "temperature=0.2"), events) == 0
    steps = [e for e in events if e["stage"] == "pretrain" and e["step"]]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["of"] == 3 and e["loss"] > 0 for e in steps)
    tensors, header = load_weights(tmp_path / "enc.safetensors", kind="encoder")
    assert header["method"] == "simclr" and header["method_params"]["temperature"] == 0.2
    assert header["input"] == InputSpec().to_dict() and header["steps"] == 3 and header["norm"] == "batch"
    network = build_network(NetworkConfig(in_channels=5, num_classes=2, features=(8, 8, 16, 16, 32)))
    load_encoder_into(network, tmp_path / "enc.safetensors", InputSpec())
    assert all(torch.equal(network.encoder.state_dict()[k], v) for k, v in tensors.items())
    # 'random' writes the seeded initial encoder; simclr moved away from the same start.
    assert cli(pretrain_args(data_dir, tmp_path / "random.safetensors", "random")) == 0
    initial, _ = load_weights(tmp_path / "random.safetensors")
    torch.manual_seed(0)
    fresh = get_method("random", features=(8, 8, 16, 16, 32)).encoder_state_dict()
    assert all(torch.equal(initial[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(initial[k], tensors[k]) for k in fresh)


def test_resume_continues_the_step_count(data_dir, tmp_path):
    output, checkpoint = tmp_path / "enc.safetensors", tmp_path / "enc.checkpoint.safetensors"
    assert cli(pretrain_args(data_dir, output, "selfpaced", "--steps", "2", "--checkpoint-every", "1")) == 0
    _, header = load_weights(checkpoint, kind="pretrain-checkpoint")
    assert header["step"] == 2 and header["method"] == "selfpaced" and "optimizer" in header
    events = []
    assert cli(pretrain_args(data_dir, output, "selfpaced", "--steps", "4", "--checkpoint-every", "1",
                             "--resume", str(checkpoint)), events) == 0
    assert [e["step"] for e in events if e["stage"] == "pretrain" and e["step"]] == [3, 4]
    assert load_weights(checkpoint)[1]["step"] == 4 and load_weights(output)[1]["steps"] == 4


def test_resume_from_another_method_is_refused_and_output_untouched(data_dir, tmp_path):
    output, checkpoint = tmp_path / "enc.safetensors", tmp_path / "enc.checkpoint.safetensors"
    assert cli(pretrain_args(data_dir, output, "simclr", "--steps", "1", "--checkpoint-every", "1")) == 0
    before = output.read_bytes()
    with pytest.raises(InputError, match="written by method 'simclr', not 'ideal'") as error:
        cli(pretrain_args(data_dir, output, "ideal", "--steps", "2", "--resume", str(checkpoint)))
    assert "\n" not in str(error.value) and output.read_bytes() == before
    with pytest.raises(InputError, match="used temperature=0.1, this run temperature=0.3"):
        cli(pretrain_args(data_dir, output, "simclr", "--steps", "2", "--resume", str(checkpoint),
                          "--param", "temperature=0.3"))


@pytest.mark.parametrize("argv_extra, message", [
    (["--method", "simclrr"], "unknown method 'simclrr' .*did you mean 'simclr'"),
    (["--param", "temprature=1"], "no parameter 'temprature'"),
    (["--param", "temperature=warm"], "expected a float"),
    (["--patch", "40"], "multiple of 16"),
])
def test_bad_arguments_are_one_line_input_errors(data_dir, tmp_path, argv_extra, message):
    argv = pretrain_args(data_dir, tmp_path / "enc.safetensors", "simclr", "--steps", "1", *argv_extra)
    with pytest.raises(InputError, match=message):
        cli(argv)
    with pytest.raises(InputError, match="must end in .safetensors"):
        cli(pretrain_args(data_dir, tmp_path / "enc.pt", "simclr"))
    assert not (tmp_path / "enc.safetensors").exists()


def test_tags_file(data_dir, tmp_path):
    (tmp_path / "tags.csv").write_text(f"{data_dir / 'a.nrrd'},siteB\n# comment\n{data_dir / 'b.nii.gz'},siteA\n")
    tagged = read_tags(tmp_path / "tags.csv", find_volumes([data_dir]))
    assert check_sources(tagged).tags == (1, 0, -1)  # ids in sorted tag order; c.mha has none
    assert cli(pretrain_args(data_dir, tmp_path / "enc.safetensors", "selfpaced", "--steps", "1",
                             "--tags", str(tmp_path / "tags.csv"))) == 0
    (tmp_path / "bad.csv").write_text("only-one-column\n")
    with pytest.raises(InputError, match="line 1: expected 'path,tag'"):
        cli(pretrain_args(data_dir, tmp_path / "enc.safetensors", "selfpaced", "--tags", str(tmp_path / "bad.csv")))


def test_parse_params_converts_types():
    params = parse_params("selfpaced", ["mode=hard", "partitions=3", "normalize=true", "volume_gamma=2,30"])
    assert params == {"mode": "hard", "partitions": 3, "normalize": True, "volume_gamma": [2.0, 30.0]}


def test_methods_command_lists_every_method(capsys):
    assert cli(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("random", "simclr", "selfpaced", "ideal", "lrc", "mixcl"))


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_cancelled_pretraining_names_the_checkpoint_it_wrote(data_dir, tmp_path, capsys, monkeypatch,
                                                              old_checkpoint):
    """Ctrl-C after a checkpoint was written must not say "nothing was written": it names the checkpoint and how
    to resume. A checkpoint left from an earlier run (older than this one) is not claimed."""
    import os

    from ContrastiveSegLib.cli import main
    from ContrastiveSegLib.training import pretrain as pretrain_module

    checkpoint = tmp_path / "enc.checkpoint.safetensors"

    def cancelled_after_a_checkpoint(*args, **kwargs):
        if not old_checkpoint:
            checkpoint.write_bytes(b"state")
        raise Cancelled("cancelled")

    if old_checkpoint:
        checkpoint.write_bytes(b"state")
        os.utime(checkpoint, (1_000_000_000, 1_000_000_000))
    monkeypatch.setattr(pretrain_module, "pretrain_encoder", cancelled_after_a_checkpoint)
    code = main([*pretrain_args(data_dir, tmp_path / "enc.safetensors"), "--checkpoint-every", "1",
                 "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1
    if old_checkpoint:
        assert err[0] == "contrastiveseg: error: cancelled; nothing was written"
    else:
        assert err[0] == (f"contrastiveseg: error: cancelled after writing {checkpoint} (checkpoint; continue with "
                          f"--resume {checkpoint})")
    assert not (tmp_path / "enc.safetensors").exists()
