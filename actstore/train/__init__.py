"""Feeding training: the shuffled chunk loader (``_loader``, options ``_loader_config``), its epoch plan
(``_shuffle``) and background decode/gather pipeline (``_pipeline``), and the example TopK SAE (``_sae``)."""
