"""The command-line tools: fairseq-codistill-launch (``launch``), -report (``report``, with
``study`` for --study and ``runs`` reading training logs), -average (``average``), and
``python -m fairseq_codistill.tools.evaluate`` and ``...tools.logs`` for the recipes."""
