"""Where scans and labels are kept: the folder and DICOMweb datastores, import, backup, synthetic volumes."""
