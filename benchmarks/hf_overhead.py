"""What CodistillSeq2SeqTrainer costs per update against a plain transformers Seq2SeqTrainer.

A Marian model built from a config (transformer-base sized by default: 6+6 layers, width
512, an 8K vocabulary; no download) trains on a fixed batch of random tokens. Interleaved
rounds (a Williams design, ``common.interleaved``) time one update each way, forward,
backward and the optimizer step (``training_step`` then ``optimizer.step``):

    plain         Seq2SeqTrainer
    alpha0        CodistillSeq2SeqTrainer, its exchange running, a peer loaded, alpha 0
    codistill     the same with alpha 1 (the peer's forward and the penalty)
    peer_forward  the peer's forward alone on the batch, under torch.inference_mode()

    overhead_alpha0 = alpha0 / plain                               (<= 1.02)
    efficiency      = (plain + peer_forward) / codistill           (>= 0.95)

    python benchmarks/hf_overhead.py            # base-sized Marian, 2048 tokens
    python benchmarks/hf_overhead.py --quick    # a small one: under a minute
"""
import argparse
import tempfile

import torch

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--tokens", type=int, default=2048, help="source tokens per batch (as many target)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2+2 layers, width 128, 512 tokens, 3 rounds")
    common.add_machine_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.vocab, args.tokens, args.reps = 2, 128, 4000, 512, 3
    args.clock = args.clock or ("wall" if args.device == "cuda" else "cpu")
    return args


def marian(args, seed: int):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    return MarianMTModel(MarianConfig(
        vocab_size=args.vocab, d_model=args.dim, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=8 if args.dim % 8 == 0 else 4, decoder_attention_heads=8 if args.dim % 8 == 0 else 4,
        encoder_ffn_dim=4 * args.dim, decoder_ffn_dim=4 * args.dim, max_position_embeddings=2 * args.seq_len,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout=0.1))


def batch(args, device):
    g = torch.Generator().manual_seed(0)
    rows = max(1, args.tokens // args.seq_len)
    ids = torch.randint(2, args.vocab, (rows, args.seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(2, args.vocab, (rows, args.seq_len), generator=g).to(device)}


def main(argv=None):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from fairseq_codistill.codistillation import Codistillation
    from fairseq_codistill.core.loss import AlphaSchedule
    from fairseq_codistill.integrations.hf import CodistillSeq2SeqTrainer, build_peer, model_meta

    args = parse_args(argv)
    device = common.setup_device(args)
    work = tempfile.mkdtemp(prefix="codistill-bench-hf-")
    training = Seq2SeqTrainingArguments(f"{work}/out", report_to=[], use_cpu=args.device == "cpu",
                                        per_device_train_batch_size=8, disable_tqdm=True)
    inputs = batch(args, device)
    plain_model, cd_model = marian(args, 0).to(device), marian(args, 0).to(device)
    plain = Seq2SeqTrainer(model=plain_model, args=training)
    ours = CodistillSeq2SeqTrainer(model=cd_model, args=training, codistill_dir=f"{work}/x", codistill_id=0,
                                   codistill_interval=10 ** 9, codistill_alpha=0.0, codistill_peer_dtype="same")
    codistill = Codistillation(cd_model, codistill_dir=f"{work}/x", codistill_id=0, codistill_interval=10 ** 9,
                               codistill_alpha=0.0, codistill_peer_dtype="same", build_peer=build_peer,
                               meta=model_meta(cd_model))
    ours.codistillation = codistill
    peer = marian(args, 1).to(device).eval()
    codistill.exchange.peers[1].model, codistill.exchange.peers[1].num_updates = peer, 0  # as a swap leaves it
    optimizers = {t: torch.optim.AdamW(t.model.parameters(), lr=1e-4) for t in (plain, ours)}
    for trainer in (plain, ours):
        trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step

    def update(trainer):
        def run():
            trainer.training_step(trainer.model, dict(inputs))
            optimizers[trainer].step()
            optimizers[trainer].zero_grad(set_to_none=True)
        return run

    def with_alpha(alpha):
        def run():
            codistill.schedule = AlphaSchedule(alpha, "constant", 1.0, None, 0)
            update(ours)()
        return run

    def peer_forward():
        decoder = cd_model.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
        with torch.inference_mode():
            peer(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=decoder)

    try:
        t = common.interleaved({"plain": update(plain), "alpha0": with_alpha(0.0), "codistill": with_alpha(1.0),
                                "peer_forward": peer_forward}, reps=args.reps, warmup=1, device=device,
                               clock=args.clock)
    finally:
        codistill.close()
    m = {k: common.median(v) for k, v in t.items()}
    params = sum(p.numel() for p in cd_model.parameters())
    print(f"# hf_overhead: Marian {args.layers}+{args.layers} layers, width {args.dim}, vocab {args.vocab} "
          f"({params / 1e6:.1f}M params), {inputs['input_ids'].numel()} source tokens per batch")
    print(common.machine_line(device, args))
    for name in t:
        print(common.time_line(name, t[name]))
    alpha0 = m["alpha0"] / m["plain"]
    print(common.ratio_line("overhead_alpha0", alpha0, "CodistillSeq2SeqTrainer at alpha 0 / Seq2SeqTrainer",
                            "<= 1.02", alpha0 <= 1.02))
    efficiency = (m["plain"] + m["peer_forward"]) / m["codistill"]
    print(common.ratio_line("efficiency", efficiency, "(plain update + peer forward) / codistilled update",
                            ">= 0.95", efficiency >= 0.95))


if __name__ == "__main__":
    main()
