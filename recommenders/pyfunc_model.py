"""MLflow "models from code" entry point: `mlflow.pyfunc.log_model(python_model=<this file>)`.

MLflow executes this file when it loads the model, so (unlike the rest of the package) it does
its one piece of work at import: declaring which PythonModel the file defines.
"""

from mlflow.models import set_model

from recommenders.pyfunc import RecommenderPyfunc

set_model(RecommenderPyfunc())
