"""Codistillation for image classifiers (ResNet50, ResNeXt101 on ImageNet) in plain
PyTorch: ``fairseq-codistill-vision`` or ``python -m fairseq_codistill.vision``.

It shares the snapshot exchange (``fairseq_codistill.exchange.peers``) and the loss core
(``fairseq_codistill.core.loss``) with the NMT plugin, and imports no fairseq.
"""
