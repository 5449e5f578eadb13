"""DICOM: series reading, coded SEG, de-identification, sending to a DICOMweb server, Orthanc and OHIF."""
