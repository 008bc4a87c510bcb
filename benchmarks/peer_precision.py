"""How much a half-precision peer changes the codistillation penalty, against the same
peer in fp32 next to an fp32 model: the penalty's value and its gradient.

    error_<dtype>      = |P_half - P_fp32| / P_fp32
    grad_error_<dtype> = ||dP_half/dz - dP_fp32/dz|| / ||dP_fp32/dz||   (z: the model's logits)

on one batch, where P is the MSE penalty (summed over tokens) and the peer's logits are
compared in fp32 either way. The same figures for a peer that computes in fp32 on weights
read back from a snapshot (``--snapshot``: int8 as fairseq_codistill.exchange.quantize stores it,
or a plain fp16/bf16 cast), named ``snapshot_<format>``, and for every peer how far its
own logits z_peer move, over the target tokens (a ``diff`` line gives the max |.|):

    logit_error_<x>    = ||z_peer_x - z_peer_fp32|| / ||z_peer_fp32||
    payload_<format>   = torch.save bytes of the snapshot / of the fp32 state_dict

With ``--checkpoints`` the two models are trained ones and the batch is the first of the
validation set (untrained models have logits near zero, which flatters half precision);
without, the IWSLT transformer with random weights on a synthetic batch, a smoke run.

    python benchmarks/peer_precision.py --quick
    python benchmarks/peer_precision.py --checkpoints m0/checkpoint_last.pt m1/checkpoint_last.pt \\
        --data data-bin/gettext.de-en/bin
"""
import argparse
import copy
import io
from typing import Dict, Tuple

import torch

import common
from fairseq_codistill.core.loss import codistill_penalty
from fairseq_codistill.core.precision import HALF_DTYPES
from fairseq_codistill.exchange.quantize import dequantize_int8, quantize_int8

SNAPSHOTS = ("int8", "fp16", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs=2, metavar=("MODEL", "PEER"),
                   help="fairseq checkpoints of the model and its peer")
    p.add_argument("--data", help="the data-bin they were trained on (with --checkpoints)")
    p.add_argument("--arch", default="transformer_iwslt_de_en", help="without --checkpoints")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=32, help="sentence length of the synthetic batch")
    p.add_argument("--half", nargs="+", default=["bf16", "fp16"], choices=sorted(HALF_DTYPES))
    p.add_argument("--snapshot", nargs="+", default=["int8", "fp16"], choices=SNAPSHOTS,
                   help="snapshot formats whose weights an fp32 peer runs on; fp16 is the "
                        "exchange's default format, the baseline for int8")
    p.add_argument("--quick", action="store_true", help="--max-tokens 256")
    common.add_machine_args(p, clock=False)
    args = p.parse_args(argv)
    if bool(args.checkpoints) != bool(args.data):
        p.error("--checkpoints and --data go together")
    if args.quick:
        args.max_tokens = 256
    return args


def trained_pair(args, device) -> Tuple[torch.nn.Module, torch.nn.Module, dict]:
    from fairseq import checkpoint_utils, utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        list(args.checkpoints), arg_overrides={"data": args.data})
    task.load_dataset("valid")
    batches = task.get_batch_iterator(task.dataset("valid"), max_tokens=args.max_tokens,
                                      required_batch_size_multiple=1)
    sample = next(iter(batches.next_epoch_itr(shuffle=False)))
    sample = utils.move_to_cuda(sample, device) if device.type == "cuda" else sample
    return models[0].to(device), models[1].to(device), sample


def random_pair(args, device) -> Tuple[torch.nn.Module, torch.nn.Module, dict]:
    flags = ["--arch", args.arch] + (["--cpu"] if device.type == "cpu" else [])
    cfg, task = common.fairseq_setup(flags, *common.IWSLT_VOCAB)
    torch.manual_seed(0)
    model, peer = task.build_model(cfg.model), task.build_model(cfg.model)
    sample = common.make_batch(task, args.max_tokens, args.seq_len, device)
    return model.to(device), peer.to(device), sample


def penalty_and_grad(logits, peer_logits, mask) -> Tuple[float, torch.Tensor]:
    own = logits.detach().requires_grad_()
    penalty = codistill_penalty(own, [peer_logits], mask=mask, reduction="sum")
    (grad,) = torch.autograd.grad(penalty, own)
    return penalty.item(), grad


def snapshot_payload(state: Dict[str, torch.Tensor], fmt: str) -> Dict[str, torch.Tensor]:
    """What a snapshot in ``fmt`` ("int8", or a dtype: "fp32", "fp16", "bf16") stores of
    ``state``: CPU tensors, tied weights cast once so torch.save stores them once (as the
    exchange writes them)."""
    if fmt == "int8":
        return quantize_int8(state)
    dtype = {"fp32": torch.float32, **HALF_DTYPES}[fmt]
    out, casts = {}, {}
    for name, t in state.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in casts:
            casts[key] = t.to(device="cpu", dtype=dtype if t.is_floating_point() else t.dtype,
                              copy=True)
        out[name] = casts[key]
    return out


def saved_bytes(state: Dict[str, torch.Tensor]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def print_errors(name: str, logits, reference, peer_logits, mask, p32: float, g32) -> None:
    """The penalty, gradient and logit error lines of one peer against the fp32 peer."""
    peer_logits = peer_logits.float()
    p, g = penalty_and_grad(logits, peer_logits.clone(), mask)
    diff = (peer_logits - reference)[mask]  # (N, V): target tokens only, as the penalty
    print(f"diff  {name:<14s} max |z_peer - z_peer_fp32| {diff.abs().max().item():.4g}   "
          f"(max |z_peer_fp32| {reference[mask].abs().max().item():.4g})")
    print(common.ratio_line(f"error_{name}", abs(p - p32) / p32, "|P_x - P_fp32| / P_fp32"))
    print(common.ratio_line(f"grad_error_{name}", ((g - g32).norm() / g32.norm()).item(),
                            "||dP_x - dP_fp32|| / ||dP_fp32||, w.r.t. the model's logits"))
    print(common.ratio_line(f"logit_error_{name}",
                            (diff.norm() / reference[mask].norm()).item(),
                            "||z_peer_x - z_peer_fp32|| / ||z_peer_fp32||, target tokens"))


def main(argv=None):
    args = parse_args(argv)
    device = common.setup_device(args)
    model, peer, sample = (trained_pair if args.checkpoints else random_pair)(args, device)
    model.eval(), peer.eval()
    with torch.inference_mode():
        logits = model(**sample["net_input"])[0].float()  # (B, T, V)
        reference = peer(**sample["net_input"])[0].float()  # (B, T, V)
    mask = sample["target"].ne(1)  # fairseq's padding index
    # out of inference mode, so they can take part in autograd
    logits, reference = logits.clone(), reference.clone()
    p32, g32 = penalty_and_grad(logits, reference.clone(), mask)
    what = "trained checkpoints, validation batch" if args.checkpoints else "random weights, synthetic batch"
    print(f"# peer_precision: {what}; {int(mask.sum())} target tokens, vocab {logits.shape[-1]}; "
          f"penalty with an fp32 peer {p32:.6g} ({p32 / int(mask.sum()):.4g} per token)")
    print(common.machine_line(device, args))
    for name in args.half:  # the peer computes in half precision
        # a copy: peer.to(half).float() would leave the peer's weights rounded for what follows
        half = copy.deepcopy(peer).to(HALF_DTYPES[name])
        with torch.inference_mode():
            peer_logits = half(**sample["net_input"])[0]
        print_errors(name, logits, reference, peer_logits, mask, p32, g32)
        del half
    state = peer.state_dict()
    fp32_bytes = saved_bytes(snapshot_payload(state, "fp32"))
    for fmt in args.snapshot:  # the peer computes in fp32, on weights read from a snapshot
        payload = snapshot_payload(state, fmt)
        size = saved_bytes(payload)
        print(f"size  snapshot {fmt:<5s} {common.fmt_bytes(size):>10s}   "
              f"(fp32 state_dict {common.fmt_bytes(fp32_bytes)})")
        print(common.ratio_line(f"payload_{fmt}", size / fp32_bytes,
                                "torch.save bytes of the snapshot / of the fp32 state_dict"))
        snap_peer = copy.deepcopy(peer)
        # dequantize_int8 also casts a payload without scales (fp16, bf16) back to fp32
        snap_peer.load_state_dict(dequantize_int8(payload))
        with torch.inference_mode():
            peer_logits = snap_peer(**sample["net_input"])[0]
        print_errors(f"snapshot_{fmt}", logits, reference, peer_logits, mask, p32, g32)
        del snap_peer


if __name__ == "__main__":
    main()
