"""Where stores live: the ``Backend`` interface and its capabilities (``_storage``), the Zarr directory
(``_zarr``), object-store (``_remote``) and HDF5 (``_h5``, crash-safe staging ``_h5stage``) backends, their
factories (``_backend``), safe file opens (``_files``), the writer lock (``_lock``) and multi-part stores
(``_parts``). Chunk-level bytes in and out; no decoding of rows."""
