"""Reading committed rows: ``ActStore`` (``_reader``) and its views (``_view``), the one block-read primitive with
its cache (``_blocks``: every decode is checked there, block sums ``_blocksums`` included), the row tables read
chunk by chunk with their checked statistics (``_rowindex``, ``_stats``), and dask arrays (``_dask``). Also the
write side's read-back (resume, rollback) goes through ``_blocks``."""
