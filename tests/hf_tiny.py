"""A tiny Marian model built from a config, a learnable toy task and the Trainer arguments
the Hugging Face tests share; ``python tests/hf_tiny.py OUT DIR ID [key=value ...]`` trains
one CodistillSeq2SeqTrainer model (the tests start two such processes)."""
import json
import sys
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel, Seq2SeqTrainingArguments

PAD, EOS, VOCAB = 0, 1, 40


def tiny_marian(seed: int = 0) -> MarianMTModel:
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=PAD,
                          eos_token_id=EOS, decoder_start_token_id=PAD, dropout=0.1)
    return MarianMTModel(config)


def toy_pairs(n: int = 256, seed: int = 0):
    """The target is the source reversed: (input_ids, labels) lists."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        src = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": src + [EOS], "labels": src[::-1] + [EOS]})
    return out


def collate(batch):
    """Pad inputs with PAD (mask 0) and labels with -100 (positions that do not count)."""
    width = max(len(b["input_ids"]) for b in batch)
    label_width = max(len(b["labels"]) for b in batch)
    ids = torch.full((len(batch), width), PAD)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), label_width), -100)
    for i, b in enumerate(batch):
        ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
        mask[i, :len(b["input_ids"])] = 1
        labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_args(out, **changes) -> Seq2SeqTrainingArguments:
    values = dict(output_dir=str(out), max_steps=30, per_device_train_batch_size=16, learning_rate=3e-3,
                  logging_steps=5, save_strategy="steps", save_steps=10, report_to=[], use_cpu=True,
                  seed=1, dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False)
    values.update(changes)
    return Seq2SeqTrainingArguments(**values)


def main(argv):
    """OUT DIR ID [key=value ...]: codistill_* keywords, args_* Trainer arguments,
    resume=..., plain=true (a plain Seq2SeqTrainer with the same model, data and seed)."""
    import os

    from transformers import Seq2SeqTrainer

    from fairseq_codistill.integrations.hf import CodistillSeq2SeqTrainer

    out, directory, model_id, *settings = argv
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in settings)}
    resume, plain = extra.pop("resume", None), extra.pop("plain", False)
    arg_changes = {k[5:]: extra.pop(k) for k in list(extra) if k.startswith("args_")}
    common = dict(model=tiny_marian(int(model_id)), args=training_args(out, **arg_changes),
                  train_dataset=toy_pairs(seed=int(model_id)), data_collator=collate)
    if plain:
        trainer = Seq2SeqTrainer(**common)
    else:
        trainer = CodistillSeq2SeqTrainer(
            **common, codistill_dir=directory, codistill_id=int(model_id), codistill_num_models=2,
            **{"codistill_interval": 5, "codistill_alpha": 1.0, **extra})
    trainer.train(resume_from_checkpoint=resume)
    # each rank its own file: under torchrun the ranks share one stdout pipe
    rank = int(os.environ.get("RANK", 0))
    result = {"rank": rank, "pid": os.getpid(), "log": trainer.state.log_history}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"result-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
