"""Clustering over NATS (docs/CLUSTER.md): mqttd nodes form one broker through subject
interest, the role EMQX's route table plays."""
