"""The core: the penalty and the alpha schedules (``loss``), and which half precision a
machine runs fast (``precision``). Torch only."""
