"""The encoders in Resources/Models: models.json is complete and true (files exist, sha256 match, the recorded
method and input spec), each loads into the network fine-tuning builds, ``contrastiveseg encoders`` lists them,
``segment --encoder NAME`` uses one, and a damaged copy fails with one line."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from ContrastiveSegLib.cli import main
from ContrastiveSegLib.data.slices import InputSpec
from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.methods import METHODS
from ContrastiveSegLib.model import TrainedModel, load_encoder_into
from ContrastiveSegLib.networks import NetworkConfig, build_network
from ContrastiveSegLib.paths import models_dir
from ContrastiveSegLib.training.checkpoint import absolute_paths
from ContrastiveSegLib.zoo.registry import default_encoder, resolve_encoder, shipped_encoders
from ContrastiveSegLib.zoo.weights import load_weights, sha256
from test_cli_errors import assert_bad_input

ENTRIES = shipped_encoders()
FIELDS = {"name", "file", "method", "description", "data", "command", "steps", "seconds", "input", "features",
          "sha256"}


def test_every_pretraining_method_ships_an_encoder():
    assert sorted(e["method"] for e in ENTRIES) == sorted(set(METHODS) - {"random"})


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_manifest_entry_is_true_to_its_file(entry):
    assert FIELDS <= set(entry)
    path = models_dir() / entry["file"]
    assert path.stat().st_size < 5 * 2**20  # "a few MB"
    assert sha256(path) == entry["sha256"]
    tensors, header = load_weights(path, kind="encoder")
    assert header["method"] == entry["method"] and header["steps"] == entry["steps"] > 0
    assert header["input"] == entry["input"] == InputSpec().to_dict()
    assert "contrastiveseg pretrain" in entry["command"] and f"--method {entry['method']}" in entry["command"]
    # It loads into the network that fine-tuning builds, and its weights are not the random initialisation.
    network = build_network(NetworkConfig(in_channels=5, num_classes=3))
    initial = network.encoder.stem.conv_0.conv.weight.clone()
    load_encoder_into(network, resolve_encoder(entry["name"]), InputSpec())
    torch.testing.assert_close(network.encoder.stem.conv_0.conv.weight, tensors["stem.conv_0.conv.weight"])
    assert not torch.allclose(network.encoder.stem.conv_0.conv.weight, initial)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_headers_record_no_build_machine_paths(entry):
    """Issue 10: the shipped headers named the build machine's folders (site-packages, /tmp, the checkout)."""
    _, header = load_weights(models_dir() / entry["file"], kind="encoder")
    assert absolute_paths(header) == []
    assert all("/" not in name and "\\" not in name for name in header["data"]["names"])
    assert len(header["data"]["names"]) == header["data"]["volumes"]


def test_encoder_writer_records_file_names_only(tmp_path):
    from ContrastiveSegLib.methods import get_method
    from ContrastiveSegLib.training.checkpoint import save_encoder

    names = ["/home/someone/scans/a.nii.gz", "/tmp/tmpx/ct_phantom_101.nii.gz", "C:\\data\\b.nrrd", "array"]
    save_encoder(tmp_path / "enc.safetensors", get_method("random", features=(8, 8, 16, 16, 32)),
                 {"data": {"volumes": 4, "names": names}})
    _, header = load_weights(tmp_path / "enc.safetensors", kind="encoder")
    assert header["data"]["names"] == ["a.nii.gz", "ct_phantom_101.nii.gz", "b.nrrd", "array"]


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors",
                                  "linked/simclr.safetensors"])
def test_manifest_entries_are_confined_to_the_models_folder(tmp_path, file):
    copy = tmp_path / "Models"
    shutil.copytree(models_dir(), copy, ignore=shutil.ignore_patterns("*.py"))
    outside = tmp_path / "outside.safetensors"
    shutil.copy(copy / ENTRIES[0]["file"], outside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(copy / ENTRIES[0]["file"], elsewhere / "simclr.safetensors")
    (copy / "linked").symlink_to(elsewhere, target_is_directory=True)
    entries = [dict(e) for e in ENTRIES]
    entries[0]["file"] = file  # the checksum still matches: only the place is wrong
    (copy / "models.json").write_text(json.dumps(entries))
    with pytest.raises(InputError, match="outside the models folder") as error:
        resolve_encoder(entries[0]["name"], copy)
    assert "\n" not in str(error.value)
    assert resolve_encoder(entries[1]["name"], copy) == copy / entries[1]["file"]  # the others still resolve


def test_encoders_command_lists_them(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for entry in ENTRIES:
        assert entry["name"] in out
    # 'random' is listed too, and the default is marked: the name segment --help, the README and the summary give.
    default = default_encoder()
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "random" in rows and rows[default].endswith("(default)")
    assert [name for name, line in rows.items() if line.endswith("(default)")] == [default]
    assert main(["encoders", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "random" and [e["name"] for e in listed[1:]] == [e["name"] for e in ENTRIES]
    assert [e["name"] for e in listed if e["default"]] == [default]
    for entry, shipped in zip(listed[1:], ENTRIES):
        assert {k: v for k, v in entry.items() if k != "default"} == {k: v for k, v in shipped.items()
                                                                      if k != "default"}


def test_a_damaged_copy_fails_its_checksum(tmp_path):
    entry = ENTRIES[0]
    copy = tmp_path / "Models"
    shutil.copytree(models_dir(), copy, ignore=shutil.ignore_patterns("*.py"))
    assert resolve_encoder(entry["name"], copy) == copy / entry["file"]
    data = bytearray((copy / entry["file"]).read_bytes())
    data[-1] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"encoder '{entry['name']}' fails its checksum"):
        resolve_encoder(entry["name"], copy)
    (copy / entry["file"]).unlink()
    with pytest.raises(InputError, match="is missing its file"):
        resolve_encoder(entry["name"], copy)


def test_the_default_encoder_is_the_marked_entry(tmp_path):
    copy = tmp_path / "Models"
    shutil.copytree(models_dir(), copy, ignore=shutil.ignore_patterns("*.py"))
    entries = [{k: v for k, v in e.items() if k != "default"} for e in ENTRIES]
    (copy / "models.json").write_text(json.dumps(entries))
    assert default_encoder(copy) == "random" and resolve_encoder(None, copy) is None
    entries[1]["default"] = True
    (copy / "models.json").write_text(json.dumps(entries))
    assert default_encoder(copy) == entries[1]["name"]
    assert resolve_encoder(None, copy) == copy / entries[1]["file"]
    assert resolve_encoder("random", copy) is None  # random initialisation stays one word away
    assert resolve_encoder("none", copy) is None  # and its earlier spelling still works
    assert sum(bool(e.get("default")) for e in ENTRIES) <= 1  # the shipped manifest marks at most one


def test_segment_with_a_shipped_encoder_records_it(phantom_files, tmp_path):
    f = phantom_files
    name = ENTRIES[0]["name"]
    assert main([str(a) for a in ["segment", f.image, f.labels, "-o", tmp_path / "seg.nii.gz", "--encoder", name,
                                  "--model-out", tmp_path / "model.safetensors", "--steps", "2", "--preset", "fast",
                                  "--device", "cpu", "--progress", "none"]]) == 0
    assert TrainedModel.load(tmp_path / "model.safetensors").encoder == name


def test_truncated_encoder_file_is_one_line(phantom_files, capsys, tmp_path):
    f = phantom_files
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((models_dir() / ENTRIES[0]["file"]).read_bytes()[:5000])
    assert_bad_input(["segment", f.image, f.labels, "-o", f.folder / "out.nii.gz", "--encoder", truncated,
                      "--steps", "2", "--device", "cpu"], capsys, "is not a readable safetensors file", f.folder)


def test_random_initialisation_is_the_shipped_default():
    # Issue 8: the shipped encoders did not help beyond the seed noise on the benchmark and were worse on real
    # scans of other subjects, so fine-tuning starts from random weights unless an encoder is named.
    assert default_encoder() == "random"
    assert resolve_encoder(None) is None
