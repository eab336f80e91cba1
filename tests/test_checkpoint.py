"""Checkpoint reading: safety, mismatch reports, position-embedding fitting, castvit format."""

import pickle

import pytest
import torch

import castvit
from castvit.checkpoint import CheckpointError, load_checkpoint
from castvit.models import read_pretrained_config, save_pretrained
from test_models import grid_superpixels, tiny_overrides


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil()}, path)
    model = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    with pytest.raises(CheckpointError, match="will not unpickle"):
        load_checkpoint(model, path)
    assert "this must never run" not in capsys.readouterr().out


def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.pth' is not a PyTorch checkpoint") as info:
        load_checkpoint(castvit.create_model("cast_small", **tiny_overrides("cast_small")), path)
    assert "weights_only" not in str(info.value)  # never advise unsafe unpickling


def test_missing_file_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(castvit.create_model("cast_small", **tiny_overrides("cast_small")), tmp_path / "nope.pth")


def test_mismatch_lists_missing_unexpected_and_misshaped_keys():
    src = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    sd = src.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["norm.bias"]
    dst = castvit.create_model("cast_small", **dict(tiny_overrides("cast_small"), num_clusters=[16, 8, 4, 2]),
                               mlp_ratio=2.0)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst, {"model": sd}, reset_head="never")
    msg = str(err.value)
    assert "missing (1): norm.bias" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "mis-shaped" in msg and "blocks.0.mlp.fc1.weight: checkpoint (192, 48) vs model (96, 48)" in msg


def test_non_strict_loads_what_fits_and_reports_the_rest():
    src = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    sd = src.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    dst = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    report = load_checkpoint(dst, sd, strict=False)
    assert "extra.weight" in report.dropped
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_head_of_another_size_is_dropped_and_reported():
    src = castvit.create_model("cast_small", **dict(tiny_overrides("cast_small"), num_classes=1000))
    dst = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    head_before = dst.head.weight.clone()
    report = load_checkpoint(dst, src.state_dict())
    assert report.dropped == ["head.weight", "head.bias"]
    assert torch.equal(dst.head.weight, head_before)


def test_learned_pe_is_interpolated_bicubically_to_the_model_grid():
    src = castvit.create_model("cast_small_deit", **tiny_overrides("cast_small_deit"))
    dst = castvit.create_model("cast_small_deit", **dict(tiny_overrides("cast_small_deit"), img_size=96))
    report = load_checkpoint(dst, src.state_dict())
    grid = src.pos_embed[:, 1:].reshape(1, 8, 8, 48).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False)
    assert torch.allclose(dst.pos_embed[0, 1:], want.permute(0, 2, 3, 1).reshape(-1, 48), atol=1e-6)
    assert torch.equal(dst.pos_embed[0, 0], src.pos_embed[0, 0])
    assert any("interpolated" in n for n in report.notes)


def test_fixed_sincos_table_is_recomputed_for_a_larger_grid():
    src = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    dst = castvit.create_model("cast_small", **dict(tiny_overrides("cast_small"), img_size=96))
    own = dst.pos_embed.clone()
    load_checkpoint(dst, src.state_dict())
    assert torch.equal(dst.pos_embed, own)


def test_classifier_weights_load_into_a_per_stage_segmentation_model():
    src = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    dst = castvit.create_model("cast_small_seg_pretrain", **tiny_overrides("cast_small_seg_pretrain"))
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith(("norm.", "pool4"))}
    report = load_checkpoint(dst, sd, strict=False)
    assert torch.equal(dst.blocks3[0].attn.qkv.weight, src.blocks[2].attn.qkv.weight)
    assert report.loaded > 100


def test_castvit_safetensors_round_trip_rebuilds_the_model(tmp_path):
    model = castvit.create_model("cast_small_deit", **tiny_overrides("cast_small_deit")).eval()
    path = save_pretrained(model, tmp_path / "model.safetensors")
    assert (tmp_path / "model.json").is_file()
    assert read_pretrained_config(path)["name"] == "cast_small_deit"
    again = castvit.create_model("cast_small_deit", pretrained=str(path)).eval()
    x, sp = torch.randn(1, 3, 64, 64), grid_superpixels(1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, sp), again(x, sp))
    with pytest.raises(CheckpointError, match="holds a 'cast_small_deit' model, not 'cast_small'"):
        castvit.create_model("cast_small", pretrained=str(path))


def test_plain_pickle_of_tensors_is_accepted(tmp_path):
    model = castvit.create_model("cast_small", **tiny_overrides("cast_small"))
    path = tmp_path / "plain.pt"
    with open(path, "wb") as fh:
        torch.save(model.state_dict(), fh, pickle_module=pickle)
    assert load_checkpoint(castvit.create_model("cast_small", **tiny_overrides("cast_small")), path).container \
        == "state_dict"
