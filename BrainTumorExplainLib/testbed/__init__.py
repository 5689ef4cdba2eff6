"""What the tests and the benchmarks build and time, kept out of the jobs in ``app``: the ``bench`` verb's
measurements (:mod:`.bench`) and an nnU-Net trained-model folder written as nnU-Net's trainer writes one
(:mod:`.nnunet_example`). The peers they compare against (Captum, nnunetv2) are test and bench extras only."""
