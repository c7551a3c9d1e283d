"""Delivery: pushes sent to APNs, FCM and Web Push from a durable queue in PostgreSQL."""
