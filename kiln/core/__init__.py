"""The bottom layer: dtypes and symbolic dims. Imports nothing from kiln but ``errors``."""
