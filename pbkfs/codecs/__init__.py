"""Page codecs."""
