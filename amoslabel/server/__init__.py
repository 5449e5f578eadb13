"""Starting servers: the MONAI Label server on this app, the DICOMweb demo, and what the app changes in it."""
