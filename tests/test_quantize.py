"""Int8 snapshots against values worked out by hand (arithmetic in the comments), their
limit cases, the round-trip error bound, ties and the bytes saved."""
import io

import pytest
import torch

from fairseq_codistill.exchange.quantize import (
    SCALE_FLOOR,
    dequantize_int8,
    payload_nbytes,
    quantize_int8,
)

# Rows whose max |w| is 127 times a power of two, so each scale is exact in fp16.
W = [[0.15625, -7.9375, 3.0],
     [1.984375, 0.5, -0.1]]
# row 0: max |w| = 7.9375 = 127 / 16 -> scale 1/16 = 0.0625
#        w / scale = (2.5, -127, 48) -> q = (2, -127, 48)   (2.5 rounds half to even)
#        q * scale = (0.125, -7.9375, 3.0)
# row 1: max |w| = 1.984375 = 127 / 64 -> scale 1/64 = 0.015625
#        w / scale = (127, 32, -6.4) -> q = (127, 32, -6)
#        q * scale = (1.984375, 0.5, -0.09375)
Q = [[2, -127, 48], [127, 32, -6]]
SCALE = [0.0625, 0.015625]
DEQ = [[0.125, -7.9375, 3.0], [1.984375, 0.5, -0.09375]]


def test_hand_worked_matrix():
    payload = quantize_int8({"proj.weight": torch.tensor(W)})
    assert set(payload) == {"proj.weight", "proj.weight@scale"}
    assert payload["proj.weight"].dtype == torch.int8
    assert payload["proj.weight"].tolist() == Q
    assert payload["proj.weight@scale"].dtype == torch.float16
    assert payload["proj.weight@scale"].tolist() == SCALE
    assert dequantize_int8(payload)["proj.weight"].tolist() == DEQ


def test_zero_row_gets_the_floor_scale_and_comes_back_zero():
    payload = quantize_int8({"w": torch.tensor([[0.0, 0.0], [1.27, -0.5]])})
    scale = payload["w@scale"]
    assert scale[0].item() == SCALE_FLOOR == 2 ** -14  # the smallest normal fp16, not 0
    assert payload["w"][0].tolist() == [0, 0]
    deq = dequantize_int8(payload)["w"]
    assert torch.isfinite(deq).all() and deq[0].tolist() == [0.0, 0.0]


def test_values_below_fp16_range_give_finite_scales_and_small_errors():
    # max|w| / 127 = 1e-6 / 127 ~ 7.9e-9 is below the smallest fp16 subnormal (~6e-8): as
    # fp16 it would be 0 and w / 0 inf. The floor 2**-14 takes its place: q = round(1e-6
    # / 6.1e-5) = 0, so the row comes back as 0, an error of 1e-6 <= 2**-15.
    w = torch.tensor([[1e-6, -5e-7, 1e-9], [1e-30, 0.0, -1e-30]])
    payload = quantize_int8({"w": w})
    assert payload["w@scale"].tolist() == [SCALE_FLOOR, SCALE_FLOOR]
    assert payload["w"].tolist() == [[0, 0, 0], [0, 0, 0]]
    deq = dequantize_int8(payload)["w"]
    assert torch.isfinite(deq).all()
    assert (deq - w).abs().max().item() <= SCALE_FLOOR / 2


def test_just_above_the_floor_keeps_its_own_scale():
    # max |w| = 127 * 2**-13: scale 2**-13 (twice the floor), q = (127, -64)
    w = torch.tensor([[127 * 2 ** -13, -64 * 2 ** -13]])
    payload = quantize_int8({"w": w})
    assert payload["w@scale"].tolist() == [2 ** -13]
    assert payload["w"].tolist() == [[127, -64]]
    assert dequantize_int8(payload)["w"].tolist() == w.tolist()


def test_biases_go_fp16_and_integer_buffers_pass_unchanged():
    step = torch.tensor([7], dtype=torch.long)
    mask = torch.tensor([True, False])
    payload = quantize_int8({"bias": torch.tensor([0.1, -2.0]), "step": step, "mask": mask,
                             "scalar": torch.tensor(3.0)})
    assert set(payload) == {"bias", "step", "mask", "scalar"}  # no scale for 0-D and 1-D
    assert payload["bias"].dtype == torch.float16
    assert payload["bias"].tolist() == torch.tensor([0.1, -2.0]).half().tolist()
    assert payload["scalar"].dtype == torch.float16 and payload["scalar"].item() == 3.0
    assert payload["step"].dtype == torch.long and payload["step"].tolist() == [7]
    assert payload["step"].data_ptr() != step.data_ptr()  # a copy, never the live buffer
    assert payload["mask"].tolist() == [True, False]
    out = dequantize_int8(payload)
    assert out["bias"].dtype == torch.float32 and out["step"].dtype == torch.long
    assert out["mask"].dtype == torch.bool


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_half_inputs_quantise_as_their_fp32_values(dtype):
    # Every value of W is exact in bf16 and fp16, so each dtype gives the hand-worked payload.
    payload = quantize_int8({"w": torch.tensor(W, dtype=dtype), "b": torch.ones(2, dtype=dtype)})
    assert payload["w"].tolist() == Q and payload["w@scale"].tolist() == SCALE
    assert payload["b"].dtype == torch.float16
    out = dequantize_int8(payload, dtype=torch.bfloat16)
    assert out["w"].dtype == out["b"].dtype == torch.bfloat16


def test_outputs_are_contiguous_cpu_tensors_of_a_strided_input():
    w = torch.tensor(W).t()  # (3, 2), not contiguous: rows are W's columns
    payload = quantize_int8({"w": w})
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in payload.values())
    # column 1 of W, (-7.9375, 0.5), is a row here: scale 1/16, q = (-127, 8)
    assert payload["w"][1].tolist() == [-127, 8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_inputs_give_cpu_payload():
    payload = quantize_int8({"w": torch.tensor(W, device="cuda"),
                             "b": torch.ones(2, device="cuda")})
    assert all(t.device.type == "cpu" for t in payload.values())
    assert payload["w"].tolist() == Q


def test_round_trip_error_is_at_most_half_a_step_per_row():
    g = torch.Generator().manual_seed(0)
    # rows of very different ranges, and a 3-D (conv-like) weight quantised per dim 0
    w = torch.randn(64, 33, generator=g) * torch.logspace(-3, 2, 64).unsqueeze(1)
    conv = torch.randn(8, 4, 3, generator=g)
    payload = quantize_int8({"w": w, "conv": conv})
    out = dequantize_int8(payload)
    for name, x in (("w", w), ("conv", conv)):
        scale = payload[f"{name}@scale"].float().reshape(-1, *[1] * (x.dim() - 1))
        assert payload[f"{name}@scale"].shape == (x.shape[0],)
        # |w - q s| <= s/2, s the stored fp16 scale, plus the fp32 rounding of q * s
        assert ((out[name] - x).abs() <= scale * (0.5 + 1e-6)).all()
        # and s is max(max|w_r| / 127, floor) to within fp16 rounding (2**-11 relative);
        # the first rows of w (max|w_r| ~ 3e-3 < 127 * 2**-14) are on the floor
        expected = (x.flatten(1).abs().amax(1) / 127).clamp(min=SCALE_FLOOR)
        assert torch.allclose(scale.flatten(), expected, rtol=2 ** -11, atol=0)
        assert payload[name].abs().max().item() == 127  # each row's largest weight uses the grid


def test_tied_weights_are_quantised_once_and_saved_once():
    emb = torch.nn.Embedding(500, 64)
    out_proj = torch.nn.Linear(64, 500, bias=False)
    out_proj.weight = emb.weight  # tied, as fairseq's --share-all-embeddings
    state = {**{f"embed.{k}": v for k, v in emb.state_dict().items()},
             **{f"output.{k}": v for k, v in out_proj.state_dict().items()}}
    assert state["embed.weight"] is not state["output.weight"]  # two tensors, one storage
    payload = quantize_int8(state)
    assert payload["embed.weight"] is payload["output.weight"]
    assert payload["embed.weight@scale"] is payload["output.weight@scale"]

    def saved(d):
        buf = io.BytesIO()
        torch.save(d, buf)
        return buf.getvalue()

    one = len(saved({"embed.weight": payload["embed.weight"],
                     "embed.weight@scale": payload["embed.weight@scale"]}))
    assert len(saved(payload)) < one + 1024  # 500 * 64 int8 bytes = 32000 stored once
    assert payload_nbytes(payload) == 500 * 64 + 500 * 2

    loaded = torch.load(io.BytesIO(saved(payload)), weights_only=True)
    out = dequantize_int8(loaded)
    assert out["embed.weight"] is out["output.weight"]
    model = torch.nn.Linear(64, 500, bias=False)
    model.load_state_dict({"weight": out["output.weight"]})


def transformer_state(d: int = 128, vocab: int = 2000) -> dict:
    torch.manual_seed(0)
    layers = torch.nn.Transformer(d_model=d, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                  dim_feedforward=4 * d, batch_first=True)
    state = {f"layers.{k}": v for k, v in layers.state_dict().items()}
    state["embed.weight"] = torch.randn(vocab, d) * d ** -0.5
    return state


def test_int8_payload_is_about_a_quarter_of_fp32():
    state = transformer_state()
    payload = quantize_int8(state)
    # int8 weights (1/4 of fp32) + fp16 scales, biases and norms (1/2, but few of them)
    assert payload_nbytes(payload) / payload_nbytes(state) < 0.3
    sizes = {}
    for name, d in (("fp32", state), ("int8", payload)):
        buf = io.BytesIO()
        torch.save(d, buf)
        sizes[name] = len(buf.getvalue())
    assert sizes["int8"] / sizes["fp32"] < 0.3  # the file, zip headers and keys included
    # and a module takes the dequantised weights back
    out = dequantize_int8(payload)
    assert set(out) == set(state)
    layers = torch.nn.Transformer(d_model=128, nhead=4, num_encoder_layers=2,
                                  num_decoder_layers=2, dim_feedforward=512,
                                  batch_first=True)
    layers.load_state_dict({k[len("layers."):]: v for k, v in out.items()
                            if k.startswith("layers.")})


def test_scale_without_its_tensor_is_an_error():
    payload = quantize_int8({"w": torch.tensor(W)})
    del payload["w"]
    with pytest.raises(ValueError, match="w@scale: a scale without its tensor w"):
        dequantize_int8(payload)


@pytest.mark.parametrize("scale", [torch.ones(3, dtype=torch.float16),  # 3 rows for 2
                                   torch.ones(2, 3, dtype=torch.float16),
                                   torch.ones(2, dtype=torch.int8)])
def test_scale_of_the_wrong_shape_or_dtype_is_an_error(scale):
    payload = quantize_int8({"w": torch.tensor(W)})
    payload["w@scale"] = scale
    with pytest.raises(ValueError, match="w@scale: expected a floating scale of shape"):
        dequantize_int8(payload)


def test_broadcastable_scale_is_accepted():
    payload = quantize_int8({"w": torch.tensor(W)})
    payload["w@scale"] = payload["w@scale"].reshape(2, 1)
    assert dequantize_int8(payload)["w"].tolist() == DEQ


def test_scale_on_a_float_tensor_is_an_error():
    payload = {"w": torch.tensor(W), "w@scale": torch.ones(2, dtype=torch.float16)}
    with pytest.raises(ValueError, match="a scale belongs to an int8 tensor"):
        dequantize_int8(payload)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e7])
def test_non_finite_or_huge_weights_are_refused(bad):
    with pytest.raises(ValueError, match="w: weights that are non-finite or above"):
        quantize_int8({"w": torch.tensor([[1.0, bad]])})


def test_a_key_with_the_scale_suffix_is_refused():
    with pytest.raises(ValueError, match="would clash"):
        quantize_int8({"w@scale": torch.ones(2, 2)})


def test_row_chunks_and_a_reused_payload_give_the_same_bits(monkeypatch):
    """On a CPU a matrix is quantised a few rows at a time (in the cache), into an earlier
    payload's tensors when given one: the bits of the hand-worked matrix, chunk or not."""
    from fairseq_codistill.exchange import quantize
    monkeypatch.setattr(quantize, "ROW_CHUNK", 3)  # one row (of 3) a chunk
    first = quantize_int8({"proj.weight": torch.tensor(W), "b": torch.tensor([0.5, 1.0])})
    assert first["proj.weight"].tolist() == Q and first["proj.weight@scale"].tolist() == SCALE
    again = quantize_int8({"proj.weight": -torch.tensor(W), "b": torch.tensor([2.0, 3.0])},
                          out=first)
    assert all(again[k] is first[k] for k in first)  # filled again
    assert again["proj.weight"].tolist() == [[-q for q in row] for row in Q]
    assert again["b"].tolist() == [2.0, 3.0]
    # a payload of other shapes is not reused
    other = quantize_int8({"proj.weight": torch.tensor(W).t()}, out=first)
    assert other["proj.weight"] is not first["proj.weight"] and other["proj.weight"].shape == (3, 2)


def test_unpack_leaves_the_payload_as_stored_and_checks_it():
    from fairseq_codistill.exchange.quantize import Int8Matrix, unpack_int8
    payload = quantize_int8({"proj.weight": torch.tensor(W), "b": torch.tensor([0.5])})
    parts = unpack_int8(payload)
    assert set(parts) == {"proj.weight", "b"} and isinstance(parts["proj.weight"], Int8Matrix)
    assert parts["proj.weight"].q is payload["proj.weight"]
    assert parts["proj.weight"].dequantize().tolist() == DEQ
    assert parts["proj.weight"].rows(1, 2).dequantize().tolist() == DEQ[1:]
    del payload["proj.weight"]
    with pytest.raises(ValueError, match="a scale without its tensor"):
        unpack_int8(payload)
