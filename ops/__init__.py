"""Jobs that chain stages (retraining when monitoring says so), for make, DAGs and demos.

This layer sits above the stages because it is the only place allowed to call more than
one of them; the stages themselves talk only through data and the registry.
"""
