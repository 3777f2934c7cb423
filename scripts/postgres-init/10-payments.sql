-- docker-compose.yml: payment-service keeps its data in a database of its own.
CREATE DATABASE payments OWNER orders;
