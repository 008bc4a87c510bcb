"""The fairseq front end: the ``codistill_translation`` task (``task``) and the
``codistill_ce`` criterion (``criterion``), registered when ``--user-dir fairseq_codistill``
imports the package; fairseq checkpoints on torch >= 2.6 (``checkpoints``), ``--bf16`` off
TPUs (``bf16``), the plugin's flags in ``--help`` (``cli_help``)."""
