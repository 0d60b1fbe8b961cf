"""The pretraining data pipeline: UniRef50 (or UniRef90/100, BFD) as a TFDS dataset, Ankh's objective as seqio preprocessors, and the
trainer's resumable per-host input.

Modules (only these import TensorFlow / seqio, and only when used):
  * ``uniref``: the TFDS builder of UniRef50/90/100 and BFD (FASTA as manual download -> sharded TFRecords,
    train/validation by id hash), in one process or on Apache Beam (``uniref_beam``, the only module importing
    Beam), with ``uniref_records`` (what happens to each record, the statistics) and ``uniref_inputs`` (the checks
    made before any work);
  * ``span_corruption``: random crop, 1-gram span masking and the ablation knobs;
  * ``input_pipeline``: ``make_input(...)`` -> ``ResumableIterator`` (``get_state`` / ``set_state``);
  * ``epoch_dataset``: the tf.data graph of one epoch behind that iterator.

Importing this package (or ``input_pipeline``) does not import TensorFlow: the trainer can name
``make_input`` in gin without paying for TF until it builds the iterator.
"""
