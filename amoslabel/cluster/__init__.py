"""A team on several servers: who leads the background work, the shared PostgreSQL, the load balancer."""
