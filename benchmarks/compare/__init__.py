"""The same W1-W4 on Celery (Redis broker and backend) and Dask distributed, on demand."""
