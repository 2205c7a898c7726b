"""mmer.realtime: the live pipeline (sources, VAD segmentation, speech-to-text, face path,
dialogue context, predictor, outputs). Entry points: ``mmer-live``, ``mmer-predict``,
``mmer-bench live``; embedding: :class:`mmer.realtime.pipeline.LivePipeline`.
"""
