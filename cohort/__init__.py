"""A cohort past one machine: batch pre-labelling and scoring on Ray (``python -m amoslabel cohort ...``).

Reading and preprocessing run as CPU tasks that stream, through Ray Data, into a pool of model actors (one per GPU,
or per CPU slot); restoring to the scan's grid runs on CPU tasks again; the driver alone writes, through the same
code as the server (:meth:`review.service.ReviewService.store_prelabel`, :func:`strategies.scoring.store_score`).
"""
