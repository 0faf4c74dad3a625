"""The on-disk format, one home for every fact of it: names, dtypes and array keys, the JSON metadata record and
its checksum (``_format``), each array's own ``zarr.json`` (``_arraymeta``), and the block codecs and the shard
layout with its crc32c (``_codec``). Pure: no file I/O. Specified in ``docs/format.md``."""
