"""AMOS Label core: configuration, organs, volumes, datastore, import."""
