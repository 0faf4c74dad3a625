"""What users run on a store: summaries (``_info``), plots (``_plot``), exports and conversion (``_export``),
``verify`` (``_verify``), the out-of-core shuffle (``_reshuffle``), SAE feature passes and queries
(``_features_pass``, ``_features``) and the static feature dashboard (``dashboard``). The CLI is
``actstore/__main__.py``."""
