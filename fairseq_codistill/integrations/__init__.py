"""Front ends for other training libraries over ``fairseq_codistill.Codistillation``:
``hf`` (Hugging Face Transformers' Seq2SeqTrainer). Each imports its library; install it
with the extra of the same name (``pip install 'fairseq-codistill[hf]'``)."""
