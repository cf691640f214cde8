"""What the ops share: backend choice and launch tiles (`backend`), argument checks
(`validation`), the vocabulary shard, row selection and TP collectives (`vocab_shards`), online
softmax merging (`online_softmax`), the Triton building blocks (`triton_common`), row chunking
of the torch paths (`chunking`), the references' dense math (`dense_math`) and the ahead-of-time
GPU build check (`compile_check`)."""
