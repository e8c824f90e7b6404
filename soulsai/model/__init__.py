"""The model floor, shared by the clients and the training node: the torch networks
(`nets`, training node only), their numpy twins (`numpy_q`, `numpy_ac`, all a client needs to
act), the weight shapes a valid model has (`shapes`), the experience each algorithm sends
(`specs`) and the exploration schedules (`schedules`)."""
