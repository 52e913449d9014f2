from django.urls import path

from . import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("detail_project/<int:project_id>/harga-items/", views.harga_items, name="harga_items"),
    path("detail_project/<int:project_id>/rekap-rab/", views.rekap_rab, name="rekap_rab"),
    path("detail_project/<int:project_id>/list-pekerjaan/", views.list_pekerjaan, name="list_pekerjaan"),
    path("detail_project/<int:project_id>/jadwal-pekerjaan/", views.jadwal_pekerjaan, name="jadwal_pekerjaan"),
    path(
        "detail_project/api/project/<int:project_id>/list-pekerjaan/tree/",
        views.api_pekerjaan_tree,
        name="api_pekerjaan_tree",
    ),
    path("api/project/<int:project_id>/pricing/", views.api_pricing, name="api_pricing"),
]
