"""Run assembly, the library side of the entry points: `omni` (SFT / OPPO / OmniOPSD runs, the
evaluation hook, checkpoint answerers), `decoder` (decoder pretraining), `config` (the run-level
configurations that gather every section)."""
