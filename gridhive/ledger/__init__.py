"""The community ledger: a Tendermint-family proof-of-authority chain (docs/LEDGER.md).

Pure core, no I/O: `Node` takes bytes, timers and the local clock and returns actions."""
from .actions import Broadcast, CommitBlock, Halt, PersistSigned, Schedule, Send, ServeBlocks
from .consensus import ConsensusConfig, verify_commit
from .crypto import SigningKey
from .mempool import MempoolConfig
from .node import Node, NodeConfig
from .provenance import provenance
from .rules import ChainRules, MarketRules
from .state import BlockError, State
from .tx import TxError, make_cert, make_tx, tx_id

__all__ = ["Broadcast", "CommitBlock", "Halt", "PersistSigned", "Schedule", "Send", "ServeBlocks",
           "ConsensusConfig", "verify_commit", "SigningKey", "MempoolConfig", "Node", "NodeConfig",
           "provenance", "ChainRules", "MarketRules", "BlockError", "State", "TxError", "make_cert",
           "make_tx", "tx_id"]
