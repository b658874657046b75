"""Evaluation exactly as RVM's official evaluators (torch-free: numpy + OpenCV).

metrics   per-frame metric definitions (MAD, MSE, Grad, Conn, dtSSD, fgrMAD, fgrMSE)
tree      the evaluation-set layout <root>/<subset>/<clip>/{com,pha,fgr}/NNNN.png and its checks
evaluate  scoring a prediction tree against the truth, RVM's aggregation, per-clip CSV
predict   recurrent inference of a model over every clip of a set (needs torch)
"""
