-- First start of the compose PostgreSQL: the databases of MLflow and Airflow beside Vigil's,
-- owned by Vigil's role (POSTGRES_USER). A hospital's DBA does the same on its server.
CREATE DATABASE mlflow OWNER vigil;
CREATE DATABASE airflow OWNER vigil;
