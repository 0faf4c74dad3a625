"""Writing a store: ``create`` / resume (``_create``), the producer facade ``StoreWriter`` (``_writer``: input
checks ``_schema``, the byte-bounded ``_queue``), the typed messages (``_messages``) the writer thread
(``_write_thread``) handles, its chunk state (``_chunks``) and per-commit row statistics (``_rowstats``), and
``StoreConfig`` (``_config``)."""
