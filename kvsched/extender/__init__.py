"""The scheduler extender: kube-scheduler's HTTP filter/prioritize/bind verbs, answered from a watch-fed cache
so that pods of managed models land on the GPU slot the controller planned. FastAPI and uvicorn live here only.
See docs/extender.md.
"""
