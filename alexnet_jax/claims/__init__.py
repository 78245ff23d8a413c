"""The paper's measured claims, reproduced: figure 1's four-layer net (ReLU against tanh) and
its training. The other claims are switches of the trainer (README, "The paper's claims")."""
