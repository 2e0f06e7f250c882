"""`make bench`: ctpipe against a stock TFX reference pipeline, scaling, serving speed."""
