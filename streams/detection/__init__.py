"""Detection: business rules over the clickstream turn interactions into signals."""
